//! The config file: `/etc/guard/guard.toml` when it exists, or `--config
//! FILE`. Its top-level keys are the flags' own long names (every flag has
//! one, by construction): `fork-action = "kill"`, `cgroup = ["/sys/fs/
//! cgroup/ci"]`, `json = true`. They are read as flags placed before the
//! command line's, so a flag given on the command line wins (a repeatable
//! one adds to the file's). `[[policy]]` tables set actions per cgroup
//! (see `policy::CgroupPolicy`). `guard config` prints the result.
//!
//! Read with the `toml` crate; keys are checked against the flags, so a
//! misspelt key is an error that names the file, not a silent default.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
};

use crate::respond::policy::CgroupPolicy;

pub const DEFAULT_PATH: &str = "/etc/guard/guard.toml";

/// What the config file contributes.
#[derive(Clone, Debug, Default)]
pub struct FromFile {
    pub path: Option<PathBuf>,
    /// Flags, to parse before the command line's.
    pub args: Vec<OsString>,
    /// The same, key by key, as the file wrote them (TOML): what a reload
    /// compares.
    pub keys: std::collections::BTreeMap<String, String>,
    pub policies: Vec<CgroupPolicy>,
}

/// The keys whose values differ between `running` and `read`, each as
/// `key: old → new` (`(unset)` for a key one of them lacks).
pub fn changed_keys(
    running: &std::collections::BTreeMap<String, String>,
    read: &std::collections::BTreeMap<String, String>,
) -> Vec<String> {
    let unset = "(unset)".to_owned();
    let mut keys: Vec<&String> = running.keys().chain(read.keys()).collect();
    keys.sort_unstable();
    keys.dedup();
    keys.into_iter()
        .filter_map(|key| {
            let (old, new) = (
                running.get(key).unwrap_or(&unset),
                read.get(key).unwrap_or(&unset),
            );
            (old != new).then(|| format!("{key}: {old} → {new}"))
        })
        .collect()
}

/// The file `--config FILE` names on `argv`, or the default one when it
/// exists; `Err` when a named file is missing.
pub fn locate(argv: &[OsString]) -> Result<Option<PathBuf>, String> {
    let mut named = None;
    let mut it = argv.iter().skip(1);
    while let Some(arg) = it.next() {
        let text = arg.to_string_lossy();
        if text == "--config" {
            named = it.next().map(PathBuf::from);
        } else if let Some(path) = text.strip_prefix("--config=") {
            named = Some(PathBuf::from(path));
        } else if text == "--" {
            break;
        }
    }
    match named {
        Some(path) if path.exists() => Ok(Some(path)),
        Some(path) => Err(format!("--config {}: no such file", path.display())),
        None => Ok(Path::new(DEFAULT_PATH)
            .exists()
            .then(|| PathBuf::from(DEFAULT_PATH))),
    }
}

/// Whether `--insecure-config` is on `argv` (read before the file is).
pub fn insecure(argv: &[OsString]) -> bool {
    argv.iter()
        .skip(1)
        .take_while(|a| *a != "--")
        .any(|a| a == "--insecure-config")
}

/// Reads `path`: its keys as flags of `command`, its policies. Refused
/// unless the file and every directory above it are root's and writable by
/// no one else (`insecure` reads it anyway, and says so): the file decides
/// what guard kills and which commands it runs as root.
pub fn load(path: &Path, command: &clap::Command, insecure: bool) -> Result<FromFile, String> {
    let read_from = match crate::host::identity::check_root_owned(path, true) {
        // The checked path, symlinks resolved: what was judged is what is read.
        Ok(real) => real,
        Err(why) if insecure => {
            eprintln!(
                "guard: WARNING: --insecure-config: reading {} although {why}; anyone who can \
                 write it can make guard kill processes or run commands as root",
                path.display()
            );
            path.to_owned()
        }
        Err(why) => {
            return Err(format!(
                "{}: refused, {why}. guard runs as root and its config file decides what it \
                 kills and which commands it runs: it must be owned by root and writable by no \
                 one else, nor may its directories be (chown root:root FILE; chmod go-w FILE), \
                 or pass --insecure-config",
                path.display()
            ));
        }
    };
    let text = std::fs::read_to_string(&read_from)
        .map_err(|e| format!("reading {}: {e}", path.display()))?;
    parse(&text, command)
        .map(|mut f| {
            f.path = Some(path.to_owned());
            f
        })
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Parses config text against `command`'s flags.
pub fn parse(text: &str, command: &clap::Command) -> Result<FromFile, String> {
    let table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
    let mut out = FromFile::default();
    for (key, value) in table {
        if key == "policy" {
            out.policies = value.try_into().map_err(|e| format!("[[policy]]: {e}"))?;
            continue;
        }
        let known = command.get_arguments().any(|a| {
            a.get_long() == Some(key.as_str())
                && !["config", "insecure-config", "help"].contains(&key.as_str())
        });
        if !known {
            return Err(format!(
                "unknown key {key:?}: keys are guard's flags without the leading -- (see guard \
                 --help), and [[policy]] tables"
            ));
        }
        out.keys.insert(key.clone(), value.to_string());
        let flag = OsString::from(format!("--{key}"));
        let value_arg = |v: &toml::Value| -> Result<OsString, String> {
            match v {
                toml::Value::String(s) => Ok(s.into()),
                toml::Value::Integer(n) => Ok(n.to_string().into()),
                toml::Value::Float(x) => Ok(x.to_string().into()),
                other => Err(format!("{key}: {other} is not a string or a number")),
            }
        };
        match &value {
            toml::Value::Boolean(true) => out.args.push(flag),
            toml::Value::Boolean(false) => {}
            toml::Value::Array(items) => {
                for item in items {
                    out.args.push(flag.clone());
                    out.args.push(value_arg(item)?);
                }
            }
            other => {
                out.args.push(flag);
                out.args.push(value_arg(other)?);
            }
        }
    }
    Ok(out)
}

/// `argv` with the config file's flags inserted before the command line's.
pub fn merged_argv(argv: &[OsString], file: &FromFile) -> Vec<OsString> {
    let mut merged = Vec::with_capacity(argv.len() + file.args.len());
    merged.extend(argv.first().cloned());
    merged.extend(file.args.iter().cloned());
    merged.extend(argv.iter().skip(1).cloned());
    merged
}

/// The effective configuration as TOML: every flag with its value and
/// where it came from, then the policies (`guard config`).
pub fn render(command: &clap::Command, matches: &clap::ArgMatches, file: &FromFile) -> String {
    let mut out = String::new();
    out.push_str(&match &file.path {
        Some(p) => format!(
            "# guard's effective configuration (file: {})\n",
            p.display()
        ),
        None => "# guard's effective configuration (no config file)\n".to_owned(),
    });
    for arg in command.get_arguments() {
        let (Some(long), id) = (arg.get_long(), arg.get_id().as_str()) else {
            continue;
        };
        if matches!(long, "config" | "insecure-config" | "help" | "version") {
            continue;
        }
        if matches!(arg.get_action(), clap::ArgAction::Count) {
            out.push_str(&format!(
                "# {long}: given on the command line only ({})\n",
                matches.get_count(id)
            ));
            continue;
        }
        let Some(raw) = matches.get_raw(id) else {
            out.push_str(&format!("# {long} = (not set)\n"));
            continue;
        };
        let values: Vec<String> = raw.map(|v| v.to_string_lossy().into_owned()).collect();
        let source = match matches.value_source(id) {
            Some(clap::parser::ValueSource::CommandLine) => "set",
            Some(clap::parser::ValueSource::DefaultValue) => "default",
            _ => "set",
        };
        let one = |v: &str| -> String {
            if v == "true" || v == "false" || v.parse::<f64>().is_ok_and(f64::is_finite) {
                v.to_owned()
            } else {
                toml::Value::String(v.to_owned()).to_string()
            }
        };
        let value = if arg.get_num_args().is_some_and(|n| n.max_values() > 1)
            || matches!(arg.get_action(), clap::ArgAction::Append)
        {
            format!(
                "[{}]",
                values.iter().map(|v| one(v)).collect::<Vec<_>>().join(", ")
            )
        } else {
            values.first().map(|v| one(v)).unwrap_or_default()
        };
        out.push_str(&format!("{long} = {value}  # {source}\n"));
    }
    #[derive(serde::Serialize)]
    struct Policies<'a> {
        policy: &'a [CgroupPolicy],
    }
    if !file.policies.is_empty() {
        out.push('\n');
        out.push_str(
            &toml::to_string(&Policies {
                policy: &file.policies,
            })
            .unwrap_or_default(),
        );
    }
    out
}

/// What each policy matches now, as TOML comments (`guard config`), and
/// the warnings for those that match nothing.
pub fn describe_matches(matching: &[(&CgroupPolicy, Vec<&str>)]) -> (String, Vec<String>) {
    const SHOWN: usize = 5;
    let mut text = String::new();
    let mut warnings = Vec::new();
    for (policy, dirs) in matching {
        let what = if policy.namespace.is_some() {
            "pod"
        } else {
            "cgroup"
        };
        if dirs.is_empty() {
            text.push_str(&format!(
                "# policy {:?}: matches no {what} now\n",
                policy.label()
            ));
            warnings.push(if policy.namespace.is_some() {
                format!(
                    "policy {:?} matches no pod now; it applies to pods started later in a \
                     matching namespace (a typo, or no --pod-logs directory here?)",
                    policy.label()
                )
            } else {
                format!(
                    "policy {:?} matches no cgroup now; it applies to cgroups made later that \
                     match (a typo, or a v1 path on a v2 host?)",
                    policy.label()
                )
            });
            continue;
        }
        text.push_str(&format!(
            "# policy {:?}: matches {} {what}{} now (and everything below them):\n",
            policy.label(),
            dirs.len(),
            if dirs.len() == 1 { "" } else { "s" }
        ));
        for dir in dirs.iter().take(SHOWN) {
            text.push_str(&format!("#   {dir}\n"));
        }
        if dirs.len() > SHOWN {
            text.push_str(&format!("#   ... {} more\n", dirs.len() - SHOWN));
        }
    }
    (text, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    fn command() -> clap::Command {
        crate::cli::Args::command()
    }

    #[test]
    fn keys_become_flags_before_the_command_line() {
        let file = parse(
            r#"
json = true
threads = false
fork-action = "kill"
fork-rate = 250
cgroup = ["/sys/fs/cgroup/a", "/sys/fs/cgroup/b"]

[[policy]]
cgroup = "/sys/fs/cgroup/system.slice/ci*"
fork-action = "kill"
mem-action = "kill"
"#,
            &command(),
        )
        .expect("valid");
        let args: Vec<String> = file
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        for pair in [
            &["--json"][..],
            &["--fork-action", "kill"],
            &["--fork-rate", "250"],
            &["--cgroup", "/sys/fs/cgroup/a"],
            &["--cgroup", "/sys/fs/cgroup/b"],
        ] {
            assert!(
                args.windows(pair.len()).any(|w| w == pair),
                "{pair:?} in {args:?}"
            );
        }
        assert!(!args.contains(&"--threads".to_owned()));
        assert_eq!(file.policies.len(), 1);
        assert_eq!(
            file.policies[0].mem_action,
            Some(crate::respond::policy::ActionKind::Kill)
        );
        let argv: Vec<OsString> = ["guard", "--fork-action", "log"]
            .map(OsString::from)
            .to_vec();
        let merged = merged_argv(&argv, &file);
        // The command line's comes last, so it wins.
        assert_eq!(merged.last(), Some(&OsString::from("log")));
    }

    #[test]
    fn mistakes_name_the_key() {
        for (text, says) in [
            ("fork-actoin = \"kill\"", "unknown key \"fork-actoin\""),
            ("config = \"/x\"", "unknown key \"config\""),
            ("fork-rate = { a = 1 }", "fork-rate"),
            (
                "[[policy]]\ncgroup = \"/a\"\nfork-acton = \"kill\"",
                "[[policy]]",
            ),
            ("json = ", "expected"),
        ] {
            let err = parse(text, &command()).expect_err(text);
            assert!(err.contains(says), "{text:?}: {err}");
        }
    }

    /// What `guard config` prints is a config file guard reads back to the
    /// same values.
    #[test]
    fn the_effective_configuration_reads_back() {
        let file = parse(
            "fork-action = \"kill\"\nprotect = [\"postgres\"]\n\n[[policy]]\ncgroup = \"/a/b*\"\nmem-action = \"stop\"\n",
            &command(),
        )
        .expect("valid");
        let argv: Vec<OsString> = ["guard", "--fork-rate", "250"].map(OsString::from).to_vec();
        let cmd = command().args_override_self(true);
        let matches = cmd.clone().get_matches_from(merged_argv(&argv, &file));
        let text = render(&cmd, &matches, &file);
        let again = parse(&text, &command()).unwrap_or_else(|e| panic!("{e}:\n{text}"));
        assert_eq!(again.policies, file.policies);
        let matches2 = cmd
            .clone()
            .get_matches_from(merged_argv(&["guard".into()], &again));
        for (id, want) in [
            ("fork_action", "kill"),
            ("fork_rate", "250"),
            ("protect", "postgres"),
        ] {
            let got: Vec<String> = matches2
                .get_raw(id)
                .map(|r| r.map(|v| v.to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            assert_eq!(got, [want], "{id} in\n{text}");
        }
    }

    #[test]
    fn a_named_file_must_exist() {
        let argv: Vec<OsString> = ["guard", "--config", "/nonexistent/guard.toml"]
            .map(OsString::from)
            .to_vec();
        assert!(
            locate(&argv)
                .expect_err("missing file")
                .contains("no such file")
        );
    }

    #[test]
    fn a_reload_names_what_changed() {
        let running = parse(
            "fork-action = \"log\"\njson = true\ncgroup = [\"/a\"]\n",
            &command(),
        )
        .expect("parse")
        .keys;
        let read = parse(
            "fork-action = \"kill\"\ncgroup = [\"/a\"]\nthreads = true\n",
            &command(),
        )
        .expect("parse")
        .keys;
        assert_eq!(
            changed_keys(&running, &read),
            [
                "fork-action: \"log\" → \"kill\"",
                "json: true → (unset)",
                "threads: (unset) → true"
            ]
        );
        assert!(changed_keys(&running, &running).is_empty());
    }

    #[test]
    fn each_policy_shows_its_cgroups_and_one_matching_none_warns() {
        let policies = crate::respond::policy::Policies::new(vec![
            CgroupPolicy {
                cgroup: "/cg/ci-*".into(),
                fork_action: None,
                mem_action: None,
                leak_action: None,
                crashloop_action: None,
                namespace: None,
            },
            CgroupPolicy {
                cgroup: "/cg/db".into(),
                fork_action: None,
                mem_action: None,
                leak_action: None,
                crashloop_action: None,
                namespace: None,
            },
        ])
        .expect("valid");
        let dirs: Vec<String> = ["/cg", "/cg/ci-2", "/cg/ci-1", "/cg/ci-1/job", "/cg/web"]
            .map(String::from)
            .to_vec();
        let (text, warnings) = describe_matches(&policies.matching(&dirs));
        assert_eq!(
            text,
            "# policy \"/cg/ci-*\": matches 3 cgroups now (and everything below them):\n\
             #   /cg/ci-1\n#   /cg/ci-1/job\n#   /cg/ci-2\n\
             # policy \"/cg/db\": matches no cgroup now\n"
        );
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("\"/cg/db\" matches no cgroup now"));
    }
}
