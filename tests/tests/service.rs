//! guard as a service: Prometheus metrics scraped over HTTP, and hooks run
//! on alerts.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    time::Duration,
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
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics port");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
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
    let (status, text) = http_get(port, "/metrics");
    assert!(status.contains("200"), "{status}");
    assert!(
        text.contains("content-type: application/openmetrics-text"),
        "{text}"
    );
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
    let _ = bystander.kill();
    let _ = bystander.wait();
    agent.stop();
}

/// `--on-alert`: the command runs per alert and action with the record on
/// stdin and its fields in the environment; one that fails is counted and
/// guard goes on (the bomb is still contained).
#[test]
fn a_hook_runs_per_alert_and_action_and_its_failure_is_counted() {
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
        if records.iter().any(|r| r["kind"] == "action") || std::time::Instant::now() > deadline {
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
