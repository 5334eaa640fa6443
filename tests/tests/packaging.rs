//! The shipped packaging, checked without a cluster (none is reachable
//! here): the DaemonSet parses as YAML and asks for exactly what guard
//! needs, and the container recipe uses the static binary `cargo xtask
//! dist` writes.

use std::path::Path;

use yaml_rust2::{Yaml, YamlLoader};

fn repo(path: &str) -> String {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

fn strings(y: &Yaml) -> Vec<&str> {
    y.as_vec()
        .map(|v| v.iter().filter_map(Yaml::as_str).collect())
        .unwrap_or_default()
}

#[test]
fn the_daemonset_asks_for_what_guard_needs_and_no_more() {
    let docs = YamlLoader::load_from_str(&repo("packaging/kubernetes/daemonset.yaml"))
        .expect("daemonset.yaml is YAML");
    let ds = &docs[0];
    assert_eq!(ds["kind"].as_str(), Some("DaemonSet"));
    assert_eq!(ds["apiVersion"].as_str(), Some("apps/v1"));
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(
        ds["spec"]["selector"]["matchLabels"], ds["spec"]["template"]["metadata"]["labels"],
        "the selector matches the pod's labels"
    );
    assert_eq!(pod["hostPID"].as_bool(), Some(true));
    let container = &pod["containers"][0];
    let security = &container["securityContext"];
    assert_eq!(security["privileged"].as_bool(), Some(false));
    assert_eq!(strings(&security["capabilities"]["drop"]), ["ALL"]);
    let mut added = strings(&security["capabilities"]["add"]);
    added.sort_unstable();
    assert_eq!(
        added,
        [
            "BPF",
            "IPC_LOCK",
            "KILL",
            "PERFMON",
            "SYS_NICE",
            "SYS_PTRACE",
            "SYS_RESOURCE"
        ]
    );
    // Every mount is read-only and names a volume of the node's, but the
    // config file, one file of the ConfigMap.
    let mounts = container["volumeMounts"].as_vec().expect("mounts");
    let volumes = pod["volumes"].as_vec().expect("volumes");
    let mut paths = Vec::new();
    for m in mounts {
        // Writable: the incident reports (on the node) and the socket's
        // directory (in memory); everything else is read only.
        if m["name"].as_str() == Some("run") {
            assert_eq!(m["mountPath"].as_str(), Some("/run/guard"));
            let volume = volumes
                .iter()
                .find(|v| v["name"] == m["name"])
                .expect("the run volume");
            assert_eq!(volume["emptyDir"]["medium"].as_str(), Some("Memory"));
            continue;
        }
        if m["name"].as_str() != Some("incidents") {
            assert_eq!(m["readOnly"].as_bool(), Some(true), "{m:?}");
        }
        if m["name"].as_str() == Some("config") {
            assert_eq!(m["mountPath"].as_str(), Some("/etc/guard/guard.toml"));
            assert_eq!(m["subPath"].as_str(), Some("guard.toml"));
            let volume = volumes
                .iter()
                .find(|v| v["name"] == m["name"])
                .expect("the config volume");
            assert_eq!(volume["configMap"]["name"].as_str(), Some("guard"));
            continue;
        }
        let volume = volumes
            .iter()
            .find(|v| v["name"] == m["name"])
            .unwrap_or_else(|| panic!("no volume for {m:?}"));
        let host = volume["hostPath"]["path"].as_str().expect("a hostPath");
        assert_eq!(
            Some(host),
            m["mountPath"].as_str(),
            "mounted where the node has it"
        );
        paths.push(host);
    }
    paths.sort_unstable();
    assert_eq!(
        paths,
        [
            "/sys/fs/cgroup",
            "/sys/kernel/btf",
            "/sys/kernel/tracing",
            "/var/lib/guard/incidents",
            "/var/log/pods"
        ]
    );
    // The arguments are guard's own flags; metrics on the port the pod
    // declares and its annotations name.
    let args = strings(&container["args"]);
    assert!(args.contains(&"--json"), "{args:?}");
    let at = args
        .iter()
        .position(|a| *a == "--metrics")
        .expect("--metrics");
    let port = args[at + 1].rsplit(':').next().expect("a port");
    assert_eq!(
        container["ports"][0]["containerPort"]
            .as_i64()
            .map(|p| p.to_string())
            .as_deref(),
        Some(port)
    );
    let annotations = &ds["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"].as_str(), Some("true"));
    assert_eq!(annotations["prometheus.io/port"].as_str(), Some(port));
    assert_eq!(annotations["prometheus.io/path"].as_str(), Some("/metrics"));
    // Log-only from the first apply: no action on the command line.
    assert!(
        !args.iter().any(|a| a.ends_with("-action")),
        "an action flag in the DaemonSet: {args:?}"
    );
    // The probes ask the agent's own health endpoints on the metrics port.
    for (probe, path) in [
        ("startupProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ] {
        assert_eq!(
            container[probe]["httpGet"]["path"].as_str(),
            Some(path),
            "{probe}"
        );
        assert_eq!(
            container[probe]["httpGet"]["port"].as_str(),
            Some("metrics"),
            "{probe}"
        );
    }
    assert!(
        container["resources"]["limits"]["memory"]
            .as_str()
            .is_some()
    );
}

/// The ConfigMap's guard.toml is one the agent accepts (`guard config
/// --check`), and acts nowhere: every action `log`, no policy in force.
#[test]
fn the_configmap_is_a_log_only_config_the_agent_accepts() {
    let docs = YamlLoader::load_from_str(&repo("packaging/kubernetes/configmap.yaml"))
        .expect("configmap.yaml is YAML");
    let cm = &docs[0];
    assert_eq!(cm["kind"].as_str(), Some("ConfigMap"));
    assert_eq!(cm["metadata"]["name"].as_str(), Some("guard"));
    let toml = cm["data"]["guard.toml"].as_str().expect("data.guard.toml");
    let dir = guard_tests::RootDir::new("configmap");
    let path = dir.path.join("guard.toml");
    std::fs::write(&path, toml).expect("write");
    let out = std::process::Command::new(guard_tests::guard_bin())
        .arg("--config")
        .arg(&path)
        .args(["config", "--check"])
        .output()
        .expect("guard config --check");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = std::process::Command::new(guard_tests::guard_bin())
        .arg("--config")
        .arg(&path)
        .arg("config")
        .output()
        .expect("guard config");
    let shown = String::from_utf8_lossy(&shown.stdout);
    for key in [
        "fork-action",
        "mem-action",
        "leak-action",
        "crashloop-action",
    ] {
        assert!(
            shown
                .lines()
                .any(|l| l.starts_with(&format!("{key} = \"log\""))),
            "{key} is not log:\n{shown}"
        );
    }
    assert!(!shown.contains("[[policy]]"), "{shown}");
}

/// Every manifest validates against Kubernetes' own schemas (1.37), strict
/// (no unknown field), with `kubernetes-validate` (`cargo xtask setup`
/// installs it into target/tools/).
#[test]
fn the_manifests_validate_against_the_kubernetes_schemas() {
    let tool = std::env::var_os("GUARD_KUBE_VALIDATE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target/tools/kubernetes-validate/bin/kubernetes-validate")
        });
    assert!(
        tool.exists(),
        "{} is missing: `cargo xtask setup` installs it",
        tool.display()
    );
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/kubernetes");
    let mut manifests: Vec<_> = std::fs::read_dir(&dir)
        .expect("packaging/kubernetes")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    manifests.sort();
    assert!(manifests.len() >= 2, "{manifests:?}");
    let out = std::process::Command::new(&tool)
        .args(["--strict", "--kubernetes-version", "1.37"])
        .args(&manifests)
        .output()
        .expect("kubernetes-validate");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "kubernetes-validate: {}\n{said}",
        out.status
    );
    assert_eq!(said.matches(" passed ").count(), manifests.len(), "{said}");
}

#[test]
fn the_container_recipe_copies_the_static_binary() {
    let recipe = repo("packaging/Containerfile");
    assert!(
        recipe.lines().any(|l| l.trim() == "FROM scratch"),
        "{recipe}"
    );
    let name = format!("guard-{}-x86_64-linux-musl", env!("CARGO_PKG_VERSION"));
    assert!(
        recipe.contains(&format!("COPY {name} /guard")),
        "the recipe must copy {name}, the file `cargo xtask dist` writes: {recipe}"
    );
}

/// `key=value` lines of a systemd unit (the last one of a key wins, as in
/// systemd).
fn unit_values(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix(&format!("{key}=")))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_unit_is_notify_with_a_watchdog_and_only_the_capabilities_guard_needs() {
    let unit = repo("packaging/guard.service");
    let one = |key: &str| {
        let v = unit_values(&unit, key);
        assert_eq!(v.len(), 1, "{key} set {} times", v.len());
        v[0].clone()
    };
    assert_eq!(one("Type"), "notify");
    assert_eq!(one("NotifyAccess"), "main");
    assert!(one("WatchdogSec").ends_with('s'));
    assert_eq!(one("OOMScoreAdjust"), "-1000");
    assert_eq!(one("ExecStart"), "/usr/local/bin/guard --json");
    let mut caps: Vec<String> = one("CapabilityBoundingSet")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    caps.sort_unstable();
    assert_eq!(
        caps,
        [
            "CAP_BPF",
            "CAP_IPC_LOCK",
            "CAP_KILL",
            "CAP_PERFMON",
            "CAP_SYS_NICE",
            "CAP_SYS_PTRACE",
            "CAP_SYS_RESOURCE"
        ]
    );
    // The same set as the DaemonSet asks for.
    let ds = repo("packaging/kubernetes/daemonset.yaml");
    for cap in &caps {
        let name = cap.trim_start_matches("CAP_");
        assert!(
            ds.lines().any(|l| l.trim() == format!("- {name}")),
            "{name} not in the DaemonSet"
        );
    }
}

/// The example config file names every flag, key by key, and guard reads
/// it back (every key and both policies uncommented) without a complaint.
#[test]
fn the_example_config_documents_every_key_and_loads() {
    let example = repo("packaging/guard.toml");
    let help = std::process::Command::new(guard_tests::guard_bin())
        .arg("--help")
        .output()
        .expect("guard --help");
    let help = String::from_utf8_lossy(&help.stdout);
    let flags: Vec<&str> = help
        .lines()
        .filter_map(|l| {
            // Flag lines are indented six columns (`  -v, --verbose` two);
            // descriptions more.
            let name = l
                .strip_prefix("      --")
                .or_else(|| l.strip_prefix("  -v, --"))?;
            Some(name.split([' ', '<', '.', '[']).next().unwrap_or(name))
        })
        .filter(|f| !["help", "version", "config", "insecure-config", "verbose"].contains(f))
        .collect();
    assert!(flags.len() > 30, "{flags:?}");
    for flag in &flags {
        assert!(
            example
                .lines()
                .any(|l| l.starts_with(&format!("# {flag} = "))),
            "--{flag} is not in packaging/guard.toml"
        );
    }
    // Every key at once, but for one of each pair the flags keep exclusive
    // (on-alert or on-alert-exec): once each way.
    for left_out in ["on-alert-exec", "on-alert"] {
        let uncommented: String = example
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest)
                    if rest.starts_with("[[policy]]")
                        || rest.split_once(" = ").is_some_and(|(k, _)| {
                            k != left_out && k.chars().all(|c| c.is_ascii_lowercase() || c == '-')
                        }) =>
                {
                    rest.to_owned()
                }
                _ => l.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        // Where only root can write: guard refuses a config others could.
        let dir = guard_tests::RootDir::new("example");
        let path = dir.path.join("guard.toml");
        std::fs::write(&path, &uncommented).expect("write");
        let out = std::process::Command::new(guard_tests::guard_bin())
            .arg("--config")
            .arg(&path)
            .arg("config")
            .output()
            .expect("guard config");
        let _ = std::fs::remove_file(&path);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            uncommented
        );
        assert_eq!(text.matches("[[policy]]").count(), 3, "{text}");
    }
}

/// Every example the docs and the example config give runs under the unit:
/// metrics on an inet address, output under /var/log/guard, reload by
/// SIGHUP, descriptors for a big containment; and systemd itself accepts
/// the file (`systemd-analyze verify`, with ExecStart pointed at the binary
/// under test, since the installed path does not exist here).
#[test]
fn the_unit_runs_the_documented_examples_and_systemd_accepts_it() {
    let unit = repo("packaging/guard.service");
    let values = |key: &str| unit_values(&unit, key).join(" ");
    let example = repo("packaging/guard.toml");
    // metrics = "127.0.0.1:9750" (and "[::1]:9750" for IPv6).
    assert!(example.contains("# metrics = \"127.0.0.1:9750\""));
    let families = values("RestrictAddressFamilies");
    for family in ["AF_UNIX", "AF_INET", "AF_INET6"] {
        assert!(
            families.split_whitespace().any(|f| f == family),
            "RestrictAddressFamilies={families} lacks {family}"
        );
    }
    // output = "/var/log/guard/...": writable under ProtectSystem=strict
    // only through LogsDirectory=guard (or ReadWritePaths).
    let output = example
        .lines()
        .find_map(|l| l.strip_prefix("# output = \""))
        .expect("an output example");
    assert!(output.starts_with("/var/log/guard/"), "{output}");
    assert_eq!(values("ProtectSystem"), "strict");
    assert_eq!(values("LogsDirectory"), "guard");
    assert_eq!(values("StateDirectory"), "guard");
    // incident-dir under the state directory, socket under the runtime
    // directory: both writable under ProtectSystem=strict.
    assert!(example.contains("# incident-dir = \"/var/lib/guard/incidents\""));
    assert!(example.contains("# socket = \"/run/guard/guard.sock\""));
    assert_eq!(values("RuntimeDirectory"), "guard");
    assert_eq!(values("ExecReload"), "/bin/kill -HUP $MAINPID");
    let nofile: u64 = values("LimitNOFILE")
        .parse()
        .expect("LimitNOFILE is a number");
    assert!(nofile >= 65536, "LimitNOFILE={nofile}");
    assert_eq!(values("UMask"), "0077");

    let dir = std::env::temp_dir().join(format!("guard-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let _cleanup = guard_tests::Defer(|| {
        let _ = std::fs::remove_dir_all(&dir);
    });
    let copy = dir.join("guard.service");
    std::fs::write(
        &copy,
        unit.replace(
            "/usr/local/bin/guard",
            guard_tests::guard_bin().to_str().expect("utf8 path"),
        ),
    )
    .expect("write the unit");
    let verify = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("systemd-analyze (Debian's systemd package) runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(
        verify.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {}\n{said}",
        verify.status
    );
    // The exposure score, for the log (its figure is not a test).
    let security = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&copy)
        .output()
        .expect("systemd-analyze security");
    let text = String::from_utf8_lossy(&security.stdout);
    let overall = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or("no overall exposure line");
    eprintln!("systemd-analyze security: {overall}");
}
