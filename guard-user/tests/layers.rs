//! The folders are the layers (see the map in src/lib.rs): a module may use
//! those of its own layer and of the layers before it, and nothing else but
//! the documented exceptions. Test code is exempt.

use std::path::Path;

const ORDER: [&str; 9] = [
    "kernel", "host", "detect", "respond", "output", "pipeline", "cli", "agent", "top",
];

/// (file, the layer or module it may reach up to): src/lib.rs says why.
const EXCEPTIONS: [(&str, &str); 7] = [
    ("kernel/probes.rs", "respond::kernel_scope"),
    ("kernel/loader.rs", "respond::kernel_scope"),
    ("kernel/source.rs", "detect::blocked"),
    ("kernel/decode.rs", "host::cgroup"),
    ("kernel/loader.rs", "host::procfs"),
    ("host/observe.rs", "detect::blocked"),
    ("host/observe.rs", "detect::memory"),
];

/// `a::{b, c::{d}}` as full paths.
fn expand(tree: &str, prefix: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        if !tree.is_empty() {
            out.push(format!("{prefix}{tree}"));
        }
        return;
    };
    let head = &tree[..open];
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                expand(&inner[start..i], &format!("{prefix}{head}"), out);
                start = i + 1;
            }
            _ => {}
        }
    }
    expand(&inner[start..], &format!("{prefix}{head}"), out);
}

/// Every `crate::` path a source file uses outside its test module.
fn paths(text: &str) -> Vec<String> {
    let code: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let code = code.split("#[cfg(test)]\nmod tests").next().unwrap_or("");
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if rest.starts_with('{') {
            let end = rest.find(';').unwrap_or(rest.len());
            expand(&rest[..end], "", &mut out);
            rest = &rest[end..];
        } else {
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            out.push(rest[..end].trim_end_matches(':').to_owned());
        }
    }
    out
}

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_module_uses_only_its_layer_and_those_before_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut wrong = Vec::new();
    let mut checked = 0;
    for file in files {
        let rel = file
            .strip_prefix(&src)
            .expect("under src")
            .to_string_lossy()
            .into_owned();
        let is_test =
            rel.ends_with("tests.rs") || rel.contains("/tests/") || rel.ends_with("fixture.rs");
        let Some(layer) = ORDER.iter().position(|l| rel.starts_with(&format!("{l}/"))) else {
            continue;
        };
        if is_test {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("read");
        for path in paths(&text) {
            let Some(target) = ORDER
                .iter()
                .position(|l| path.starts_with(&format!("{l}::")) || path == *l)
            else {
                continue;
            };
            checked += 1;
            let excused = EXCEPTIONS
                .iter()
                .any(|(f, to)| rel == *f && path.starts_with(to));
            if target > layer && !excused {
                wrong.push(format!("{rel} uses crate::{path}"));
            }
        }
    }
    assert!(
        checked > 200,
        "only {checked} paths read: is the parser blind?"
    );
    wrong.sort();
    wrong.dedup();
    assert!(
        wrong.is_empty(),
        "layer order broken:\n{}",
        wrong.join("\n")
    );
}
