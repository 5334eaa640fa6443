//! guard as a service: Prometheus metrics scraped over HTTP, and hooks run
//! on alerts.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    time::{Duration, Instant},
};

use guard_tests::{Agent, TestCgroup};

const BOMB: &str = ":(){ :|:& };:";

/// A port free now on the loopback.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// (status line, headers and body) of GET `path`.
fn http_get(port: u16, path: &str) -> (String, String) {
    http_get_accepting(port, path, None)
}

/// The same, with an `Accept` header.
fn http_get_accepting(port: u16, path: &str, accept: Option<&str>) -> (String, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics port");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\n{accept}Connection: close\r\n\r\n"
    )
    .expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    let status = response.lines().next().unwrap_or_default().to_owned();
    (status, response)
}

/// The value of the sample `name{labels}` (labels written as guard writes
/// them), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// `promtool check metrics` (Prometheus' own linter, as
/// `cargo xtask setup` fetches it) passes the body of `response`.
fn promtool_accepts(response: &str) {
    let tool = std::env::var_os("GUARD_PROMTOOL")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tools/promtool")
        });
    assert!(
        tool.exists(),
        "{} is missing: `cargo xtask setup` fetches it",
        tool.display()
    );
    let body = response
        .split_once("\r\n\r\n")
        .map_or(response, |(_, body)| body);
    let mut child = std::process::Command::new(&tool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}\n{}{}\non:\n{body}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn prometheus_scrapes_events_pids_alerts_actions_and_the_agent_itself() {
    let cg = TestCgroup::new("metrics", 1000, 512 << 20);
    let scope = cg.pids_dir().to_str().expect("utf8").to_owned();
    let port = free_port();
    let mut agent = Agent::start(&[
        "--cgroup",
        &scope,
        "--fork-action",
        "kill",
        "--metrics",
        &format!("127.0.0.1:{port}"),
    ]);
    // Before any event: live, ready once the first snapshot is in, and
    // every counter the configuration can move already there at 0, in the
    // classic format a plain client gets, which promtool accepts.
    let (status, body) = http_get(port, "/healthz");
    assert!(status.contains("200"), "{status}\n{body}");
    let ready = Instant::now();
    loop {
        let (status, body) = http_get(port, "/readyz");
        if status.contains("200") {
            assert!(body.contains("probes attached"), "{body}");
            break;
        }
        assert!(status.contains("503"), "{status}\n{body}");
        assert!(
            ready.elapsed() < Duration::from_secs(10),
            "/readyz still {status} after 10 s:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, text) = http_get(port, "/metrics");
    assert!(
        text.contains("content-type: text/plain; version=0.0.4"),
        "{text}"
    );
    for line in [
        "guard_build_info{version=\"0.1.0\"} 1",
        "guard_alerts_total{detector=\"fork\",rule=\"explosion\"} 0",
        "guard_alerts_total{detector=\"crashloop\",rule=\"crash_loop\"} 0",
        "guard_actions_total{detector=\"fork\",action=\"kill\",outcome=\"contained\"} 0",
        "# HELP guard_alerts_total Alerts raised, by detector and rule.",
        "# TYPE guard_alerts_total counter",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
    }
    promtool_accepts(&text);
    let mut bystander = cg.spawn_ready(&["sleep", "60"]);
    let (status, _) = guard_tests::run(&mut cg.workload(&["forks", "500"]));
    assert!(status.success());
    let _ = cg.spawn_bash(BOMB).wait();
    agent.wait_for(Duration::from_secs(20), "the bomb's action", |r| {
        r["kind"] == "action" && r["detector"] == "fork"
    });
    cg.wait_until_gone("bash", Duration::from_secs(20));
    // The snapshot is taken every second.
    std::thread::sleep(Duration::from_millis(2200));
    // As Prometheus asks: OpenMetrics.
    let (status, text) = http_get_accepting(
        port,
        "/metrics",
        Some(
            "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4,\
             */*;q=0.1",
        ),
    );
    assert!(status.contains("200"), "{status}");
    assert!(
        text.contains("content-type: application/openmetrics-text"),
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(
        text.lines().any(|l| l == "# TYPE guard_alerts counter"),
        "{text}"
    );
    promtool_accepts(&http_get(port, "/metrics").1);
    let forks = sample(&text, "guard_events_total{kind=\"fork\"}").expect("fork events");
    assert!(forks >= 500.0, "{forks} fork events counted:\n{text}");
    assert_eq!(
        sample(&text, &format!("guard_pids_limit{{cgroup=\"{scope}\"}}")),
        Some(1000.0),
        "{text}"
    );
    assert!(
        sample(&text, &format!("guard_pids_current{{cgroup=\"{scope}\"}}")).is_some(),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("guard_alerts_total{detector=\"fork\",") && !l.ends_with(" 0")),
        "{text}"
    );
    assert!(
        sample(
            &text,
            "guard_actions_total{detector=\"fork\",action=\"kill\",outcome=\"contained\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert!(
        sample(&text, "guard_agent_rss_bytes").is_some_and(|n| n > 0.0),
        "{text}"
    );
    assert!(
        sample(&text, "guard_agent_cpu_seconds_total").is_some_and(|n| n > 0.0),
        "{text}"
    );
    assert!(sample(&text, "guard_blocked_tasks").is_some(), "{text}");
    let (status, _) = http_get(port, "/other");
    assert!(status.contains("404"), "{status}");
    let (status, _) = http_get(port, "/healthz");
    assert!(status.contains("200"), "{status}");
    let _ = bystander.kill();
    let _ = bystander.wait();
    agent.stop();
}

/// `--on-alert`: the command runs per alert, action and `resolved` with the
/// record on stdin and its fields in the environment, one incident id from
/// the alert to its end; one that fails is counted and guard goes on (the
/// bomb is still contained).
#[test]
fn a_hook_runs_per_alert_action_and_resolved_and_its_failure_is_counted() {
    let cg = TestCgroup::new("hook", 1000, 512 << 20);
    let scope = cg.pids_dir().to_str().expect("utf8").to_owned();
    let dir = std::env::temp_dir().join(format!("guard-test-hook-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let _cleanup = guard_tests::Defer(|| {
        let _ = std::fs::remove_dir_all(&dir);
    });
    let command = format!(
        "env | grep ^GUARD_ > {d}/env.$$; cat > {d}/record.$$; exit 3",
        d = dir.display()
    );
    let mut agent = Agent::start(&[
        "--cgroup",
        &scope,
        "--fork-action",
        "kill",
        "--on-alert",
        &command,
    ]);
    let _ = cg.spawn_bash(BOMB).wait();
    agent.wait_for(Duration::from_secs(20), "the bomb's action", |r| {
        r["kind"] == "action" && r["detector"] == "fork"
    });
    cg.wait_until_gone("bash", Duration::from_secs(20));
    // Hooks run on a thread of their own: give them a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let records = loop {
        let mut records: Vec<serde_json::Value> = std::fs::read_dir(&dir)
            .expect("read dir")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("record."))
            .filter_map(|e| serde_json::from_str(&std::fs::read_to_string(e.path()).ok()?).ok())
            .collect();
        records.sort_by_key(|r| r["kind"].as_str().unwrap_or_default().to_owned());
        if records.iter().any(|r| r["kind"] == "resolved") || std::time::Instant::now() > deadline {
            break records;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stopped = agent.stop();
    let alert = records
        .iter()
        .find(|r| r["kind"] == "alert" && r["detector"] == "fork")
        .unwrap_or_else(|| panic!("no alert reached the hook: {records:?}"));
    let action = records
        .iter()
        .find(|r| r["kind"] == "action" && r["detector"] == "fork")
        .unwrap_or_else(|| panic!("no action reached the hook: {records:?}"));
    assert_eq!(action["action"], "kill", "{action}");
    let pid = action["offender"]["pid"].as_u64().expect("offender pid");
    let envs: Vec<String> = std::fs::read_dir(&dir)
        .expect("read dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("env."))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .collect();
    assert!(
        envs.iter().any(|e| e.contains("GUARD_KIND=action")
            && e.contains("GUARD_DETECTOR=fork")
            && e.contains("GUARD_ACTION=kill")
            && e.contains(&format!("GUARD_PID={pid}"))),
        "{envs:?}"
    );
    assert!(alert["rule"].is_string(), "{alert}");
    // One incident from the alert to its end, on this host, and the
    // hook's environment names it.
    let resolved = records
        .iter()
        .find(|r| r["kind"] == "resolved" && r["detector"] == "fork")
        .unwrap_or_else(|| panic!("no resolved record reached the hook: {records:?}"));
    let incident = alert["incident"].as_str().expect("an incident id");
    assert_eq!(action["incident"], incident, "{action}");
    assert_eq!(resolved["incident"], incident, "{resolved}");
    assert_eq!(resolved["ended"], "contained", "{resolved}");
    assert_eq!(alert["severity"], "critical", "{alert}");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    for r in [alert, action, resolved] {
        assert_eq!(r["host"], host.trim(), "{r}");
    }
    assert!(
        envs.iter().any(|e| e.contains("GUARD_KIND=alert")
            && e.contains(&format!("GUARD_INCIDENT={incident}"))
            && e.contains("GUARD_SEVERITY=critical")
            && e.contains(&format!("GUARD_HOST={}", host.trim()))),
        "{envs:?}"
    );
    let hooks = &stopped.summary()["hooks"];
    // Every hook exits 3 (the last may still be running at the summary).
    let (run, failed) = (
        hooks["run"].as_u64().unwrap_or(0),
        hooks["failed"].as_u64().unwrap_or(0),
    );
    assert!(
        run >= 2 && failed >= 1 && run - failed <= 1,
        "hooks that failed are counted, and guard went on: {hooks}"
    );
}

/// `--output FILE`: records go to the file; after logrotate's move and a
/// SIGHUP, to a new file at the same path, none lost between the two.
#[test]
fn output_goes_to_a_file_opened_again_on_sighup() {
    let cg = TestCgroup::new("output-file", 16, 128 << 20);
    let scope = cg.pids_dir().to_str().expect("utf8").to_owned();
    let dir = std::env::temp_dir().join(format!("guard-test-output-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let _cleanup = guard_tests::Defer(|| {
        let _ = std::fs::remove_dir_all(&dir);
    });
    let (log, rotated) = (dir.join("guard.json"), dir.join("guard.json.1"));
    let mut child = std::process::Command::new(guard_tests::guard_bin())
        .args(guard_tests::NO_REPORTS)
        .args(["--json", "--cgroup", &scope, "--events", "exit", "--output"])
        .arg(&log)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn guard");
    let pid = child.id() as i32;
    let _kill = guard_tests::kill_on_drop(child.id());
    let exits_in = |path: &std::path::Path, code: u64| {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|r| r["kind"] == "exit" && r["exit_code"] == code)
            .count()
    };
    let wait_until = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "{what} within 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_until("the start record", &|| {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("\"kind\":\"start\""))
    });
    guard_tests::run(&mut cg.workload(&["exit", "7"]));
    wait_until("the first exit", &|| exits_in(&log, 7) == 1);
    std::fs::rename(&log, &rotated).expect("rotate");
    // SAFETY: signals our own child.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    std::thread::sleep(Duration::from_millis(200));
    guard_tests::run(&mut cg.workload(&["exit", "8"]));
    wait_until("the second exit in the new file", &|| {
        exits_in(&log, 8) == 1
    });
    // SAFETY: signals our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    assert!(child.wait().expect("wait").success());
    assert_eq!((exits_in(&rotated, 7), exits_in(&rotated, 8)), (1, 0));
    let new = std::fs::read_to_string(&log).expect("new file");
    assert!(new.contains("\"kind\":\"summary\""), "{new}");
    assert_eq!(exits_in(&log, 7), 0);
}

/// A config file with a policy per cgroup: a bomb in the CI cgroup is
/// killed (the policy's `kill`), one in the database cgroup is only
/// reported (the file's `fork-action = "log"`), and the probe leaves it
/// alone. A bad file on SIGHUP keeps the running configuration.
#[test]
fn policies_give_each_cgroup_its_action_and_a_bad_reload_keeps_the_old() {
    let ci = TestCgroup::new("policy-ci", 1000, 512 << 20);
    let db = TestCgroup::new("policy-db", 300, 512 << 20);
    let root = ci
        .pids_dir()
        .parent()
        .expect("parent")
        .to_str()
        .expect("utf8")
        .to_owned();
    // Where only root can write: guard refuses a config others could.
    let dir = guard_tests::RootDir::new("policy");
    let config = dir.path.join("guard.toml");
    std::fs::write(
        &config,
        format!(
            "fork-action = \"log\"\ncgroup = [{ci:?}, {db:?}]\n\n[[policy]]\ncgroup = \"{root}/guard-test-policy-ci-*\"\nfork-action = \"kill\"\n",
            ci = ci.pids_dir().to_str().expect("utf8"),
            db = db.pids_dir().to_str().expect("utf8"),
        ),
    )
    .expect("write config");
    let mut agent = Agent::start(&["--config", config.to_str().expect("utf8")]);
    let _ = ci.spawn_bash(BOMB).wait();
    let action = agent.wait_for(Duration::from_secs(20), "the CI bomb's action", |r| {
        r["kind"] == "action" && r["detector"] == "fork"
    });
    assert_eq!(action["action"], "kill", "{action}");
    ci.wait_until_gone("bash", Duration::from_secs(20));
    assert_eq!(ci.pids_refused(), 0, "the CI bomb reached pids.max");

    let _ = db.spawn_bash(BOMB).wait();
    let alert = agent.wait_for(Duration::from_secs(20), "the database bomb's alert", |r| {
        r["kind"] == "alert"
            && r["detector"] == "fork"
            && r["cgroup"].as_str() == db.pids_dir().to_str()
    });
    assert_eq!(alert["action"], "log", "{alert}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        db.live_named("bash") > 10,
        "the database bomb was signalled: {} left",
        db.live_named("bash")
    );
    db.kill_all();

    // A misspelt key on reload: the running configuration stays.
    std::fs::write(&config, "fork-actoin = \"kill\"\n").expect("write");
    agent.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    let stopped = agent.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    assert!(
        stopped.stderr.contains("keeping the running configuration")
            && stopped.stderr.contains("fork-actoin"),
        "{}",
        stopped.stderr
    );
    assert!(
        !stopped
            .records
            .iter()
            .any(|r| r["kind"] == "action" && r["cgroup"].as_str() == db.pids_dir().to_str()),
        "an action in the database cgroup"
    );
}

/// A policy softer than the flag is what the fork probe does in that
/// cgroup too: under `fork-action = "kill"`, a cgroup whose policy says
/// `stop` has its bomb condemned with SIGSTOP by the probe (it used to be
/// killed there, the probe acting with the strongest action anywhere).
#[test]
fn a_stop_policy_under_a_kill_flag_is_a_stop_in_the_probe_too() {
    let svc = TestCgroup::new("policy-svc", 1000, 512 << 20);
    let root = svc
        .pids_dir()
        .parent()
        .expect("parent")
        .to_str()
        .expect("utf8")
        .to_owned();
    let dir = guard_tests::RootDir::new("policy-stop");
    let config = dir.path.join("guard.toml");
    std::fs::write(
        &config,
        format!(
            "fork-action = \"kill\"\nevents = \"condemned\"\ncgroup = [{svc:?}]\n\n[[policy]]\ncgroup = \"{root}/guard-test-policy-svc-*\"\nfork-action = \"stop\"\n",
            svc = svc.pids_dir().to_str().expect("utf8"),
        ),
    )
    .expect("write config");
    let mut agent = Agent::start(&["--config", config.to_str().expect("utf8")]);
    // Not waited for: the bomb's first process may be stopped before it
    // returns.
    let mut root = svc.spawn_bash(BOMB);
    let condemned = agent.wait_for(Duration::from_secs(20), "the probe's condemnation", |r| {
        r["kind"] == "condemned"
    });
    let action = agent.wait_for(Duration::from_secs(20), "the stop", |r| {
        r["kind"] == "action" && r["detector"] == "fork"
    });
    std::thread::sleep(Duration::from_millis(300));
    let members = svc.members();
    let running: Vec<_> = members
        .iter()
        .filter(|m| m.1 == "bash" && m.2 != 'T' && m.2 != 'Z')
        .collect();
    let stopped_members = members.iter().filter(|m| m.2 == 'T').count();
    svc.kill_all();
    let _ = root.wait();
    let refused = svc.pids_refused();
    agent.stop();
    assert_eq!(condemned["signal"], "SIGSTOP", "{condemned}");
    assert_eq!(action["action"], "stop", "{action}");
    assert!(
        running.is_empty(),
        "bomb processes still running: {running:?}"
    );
    assert!(
        stopped_members > 10,
        "the bomb was stopped, not killed: {stopped_members} stopped"
    );
    assert_eq!(refused, 0, "the bomb reached pids.max");
}

/// `guard config --check` is the agent's own validation: a policy the
/// agent refuses at start is refused by the check too, with the same
/// reason, and exit 1; a valid file passes, and each policy is shown with
/// the cgroups it matches now, one that matches none with a warning.
#[test]
fn config_check_refuses_what_the_agent_refuses_and_shows_each_policys_cgroups() {
    let cg = TestCgroup::new("config-check", 100, 64 << 20);
    let dir = guard_tests::RootDir::new("config-check");
    let config = dir.path.join("guard.toml");
    let config_arg = config.to_str().expect("utf8").to_owned();
    let scope = cg.pids_dir().to_str().expect("utf8").to_owned();
    let guard = |args: &[&str]| {
        let out = std::process::Command::new(guard_tests::guard_bin())
            .args(["--config", &config_arg])
            .args(args)
            .output()
            .expect("run guard");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    std::fs::write(
        &config,
        format!(
            "cgroup = [{scope:?}]\n\n[[policy]]\ncgroup = {scope:?}\ncrashloop-action = \"kill\"\n"
        ),
    )
    .expect("write config");
    let (code, _, checked) = guard(&["config", "--check"]);
    assert_eq!(code, Some(1), "config --check accepted it:\n{checked}");
    assert!(
        checked.contains("crashloop-action is log or stop"),
        "{checked}"
    );
    // The agent refuses it for the same reason.
    let (code, _, started) = guard(&["--dry-run"]);
    assert_eq!(code, Some(1), "the agent started:\n{started}");
    assert!(
        started.contains("crashloop-action is log or stop"),
        "{started}"
    );

    let nowhere = format!("{scope}-nowhere-*");
    std::fs::write(
        &config,
        format!(
            "cgroup = [{scope:?}]\nfork-action = \"kill\"\n\n[[policy]]\ncgroup = {scope:?}\nfork-action = \"stop\"\n\n[[policy]]\ncgroup = {nowhere:?}\nfork-action = \"log\"\n"
        ),
    )
    .expect("write config");
    let (code, shown, said) = guard(&["config", "--check"]);
    assert_eq!(code, Some(0), "{shown}\n{said}");
    assert!(
        shown.contains("matches 1 cgroup now") && shown.contains(&format!("#   {scope}\n")),
        "{shown}"
    );
    assert!(
        said.contains(&format!("policy {nowhere:?} matches no cgroup now")),
        "{said}"
    );
    assert!(
        shown.contains("the agent accepts this configuration"),
        "{shown}"
    );
    // Plain `guard config` shows the matches too.
    let (code, shown, said) = guard(&["config"]);
    assert_eq!(code, Some(0), "{said}");
    assert!(shown.contains(&format!("#   {scope}\n")), "{shown}");
    assert!(said.contains("matches no cgroup now"), "{said}");
    // A scope that does not exist: the agent would refuse it.
    std::fs::write(&config, format!("cgroup = [\"{scope}-missing\"]\n")).expect("write config");
    let (code, _, said) = guard(&["config", "--check"]);
    assert_eq!(code, Some(1), "{said}");
}

/// SIGHUP names each changed flag with its running and new value, and
/// says it applies at the next start; the policies apply at once.
#[test]
fn sighup_names_each_changed_setting() {
    let cg = TestCgroup::new("reload-names", 100, 64 << 20);
    let dir = guard_tests::RootDir::new("reload-names");
    let config = dir.path.join("guard.toml");
    let scope = cg.pids_dir().to_str().expect("utf8").to_owned();
    std::fs::write(
        &config,
        format!("cgroup = [{scope:?}]\nfork-action = \"log\"\n"),
    )
    .expect("write config");
    let agent = Agent::start(&["--config", config.to_str().expect("utf8")]);
    std::fs::write(
        &config,
        format!(
            "cgroup = [{scope:?}]\nfork-action = \"kill\"\nthreads = true\n\n[[policy]]\ncgroup = {scope:?}\nfork-action = \"stop\"\n"
        ),
    )
    .expect("write config");
    agent.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !agent.stderr().contains("apply when guard restarts") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let stopped = agent.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    for said in [
        "fork-action: \"log\" → \"kill\"",
        "threads: (unset) → true",
        "apply when guard restarts",
        "1 policies apply now (changed)",
    ] {
        assert!(
            stopped.stderr.contains(said),
            "no {said:?} in:\n{}",
            stopped.stderr
        );
    }
    assert!(!stopped.stderr.contains("cgroup: "), "{}", stopped.stderr);
}

/// `--on-alert-exec`: the program runs with no shell between, its
/// arguments as given, the record on stdin; both flags at once are refused.
#[test]
fn a_program_hook_runs_without_a_shell() {
    let cg = TestCgroup::new("hook-exec", 1000, 512 << 20);
    let scope = cg.pids_dir().to_str().expect("utf8").to_owned();
    let dir = std::env::temp_dir().join(format!("guard-test-hook-exec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let _cleanup = guard_tests::Defer(|| {
        let _ = std::fs::remove_dir_all(&dir);
    });
    // A `$` and a space that a shell would have expanded or split.
    let file = dir.join("records $HOME.ndjson");
    let file_arg = file.to_str().expect("utf8").to_owned();
    let both = std::process::Command::new(guard_tests::guard_bin())
        .args(["--on-alert", "true", "--on-alert-exec", "/usr/bin/true"])
        .output()
        .expect("guard");
    assert_eq!(both.status.code(), Some(2), "both hooks were accepted");
    let mut agent = Agent::start(&[
        "--cgroup",
        &scope,
        "--fork-action",
        "kill",
        "--on-alert-exec",
        "/usr/bin/tee",
        "--on-alert-exec",
        "-a",
        "--on-alert-exec",
        &file_arg,
    ]);
    let _ = cg.spawn_bash(BOMB).wait();
    agent.wait_for(Duration::from_secs(20), "the bomb's action", |r| {
        r["kind"] == "action" && r["detector"] == "fork"
    });
    cg.wait_until_gone("bash", Duration::from_secs(20));
    let deadline = Instant::now() + Duration::from_secs(15);
    let hooked = loop {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        if text.lines().any(|l| l.contains("\"kind\":\"action\"")) || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stopped = agent.stop();
    let kinds: Vec<serde_json::Value> = hooked
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON record per line"))
        .collect();
    assert!(
        kinds.iter().any(|r| r["kind"] == "alert") && kinds.iter().any(|r| r["kind"] == "action"),
        "the hook wrote {hooked:?}; stderr:\n{}",
        stopped.stderr
    );
    assert!(kinds.iter().all(|r| r["time"].is_string()), "{hooked}");
}
