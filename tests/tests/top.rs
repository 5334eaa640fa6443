//! `guard top` in tmux against real growing workloads, and the incident
//! report of a real action read back through `guard incident`.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use guard_tests::{Agent, Defer, RootDir, TestCgroup, guard_bin, workload_bin};

/// A tmux session of the test's own, killed on drop.
struct Tmux {
    name: String,
}

impl Tmux {
    fn start(name: &str, width: u32, height: u32, env: &[(&str, &str)], argv: &[&str]) -> Self {
        let name = format!("guard-test-{name}-{}", std::process::id());
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &name])
            .stderr(std::process::Stdio::null())
            .status();
        let mut cmd = Command::new("tmux");
        cmd.args(["new-session", "-d", "-s", &name, "-x"])
            .arg(width.to_string())
            .arg("-y")
            .arg(height.to_string());
        for (k, v) in env {
            cmd.args(["-e", &format!("{k}={v}")]);
        }
        cmd.arg("--").args(argv);
        let status = cmd.status().expect("tmux");
        assert!(status.success(), "tmux new-session failed: {status}");
        Self { name }
    }

    fn capture(&self, escapes: bool) -> String {
        let mut cmd = Command::new("tmux");
        cmd.args(["capture-pane", "-p", "-t", &self.name]);
        if escapes {
            cmd.arg("-e");
        }
        let out = cmd.output().expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &str) {
        let status = Command::new("tmux")
            .args(["send-keys", "-t", &self.name, keys])
            .status()
            .expect("tmux send-keys");
        assert!(status.success());
    }

    fn alive(&self) -> bool {
        Command::new("tmux")
            .args(["has-session", "-t", &self.name])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Captures until `pred` holds, panicking with the last screen.
    fn wait_for(&self, within: Duration, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let until = Instant::now() + within;
        loop {
            let screen = self.capture(false);
            if pred(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < until,
                "guard top did not show {what} within {within:?}; the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.name])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// `guard top --no-agent` on `socket` in a tmux session of `width` ×
/// `height`, with NO_COLOR when `no_color`.
fn top_session(
    name: &str,
    width: u32,
    height: u32,
    no_color: bool,
    socket: &std::path::Path,
) -> Tmux {
    let guard = guard_bin();
    let mut env = vec![("TERM", "xterm-256color")];
    if no_color {
        env.push(("NO_COLOR", "1"));
    }
    Tmux::start(
        name,
        width,
        height,
        &env,
        &[
            guard.to_str().expect("utf8"),
            "--socket",
            socket.to_str().expect("utf8"),
            "top",
            "--no-agent",
        ],
    )
}

/// The row of the screen that names `needle`.
fn row<'a>(screen: &'a str, needle: &str) -> &'a str {
    screen
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no row with {needle:?}:\n{screen}"))
}

/// A server leaking a sleeping helper every 80 ms toward pids.max 600, under
/// a log-only agent: within a few seconds `guard top` shows its cgroup, the
/// program that would be acted on, and a time to the limit that fits the
/// rate; `s` sorts by growth; it fits 80×24; NO_COLOR leaves no colour;
/// `q` ends it and gives the terminal back.
#[test]
fn top_shows_a_growing_runner_its_program_and_its_time_to_the_limit() {
    let cg = TestCgroup::new("top-runner", 600, 256 << 20);
    let quiet = TestCgroup::new("top-quiet", 600, 256 << 20);
    let scope = cg.pids_dir().to_str().expect("utf8").to_owned();
    let quiet_scope = quiet.pids_dir().to_str().expect("utf8").to_owned();
    let agent = Agent::start(&[
        "--cgroup",
        &scope,
        "--cgroup",
        &quiet_scope,
        "--events",
        "none",
    ]);
    let socket = agent.dir.as_ref().expect("own dir").socket();
    let mut idle = quiet.command("sleep").arg("600").spawn().expect("sleep");
    let _idle = Defer(move || {
        let _ = idle.kill();
        let _ = idle.wait();
    });
    let mut server = cg.spawn_ready(&["leak", "80"]);
    let server_pid = server.id();
    let _server = Defer(move || {
        let _ = server.kill();
        let _ = server.wait();
    });
    let started = Instant::now();
    let tmux = top_session("top", 120, 40, false, &socket);
    let screen = tmux.wait_for(
        Duration::from_secs(20),
        "the runner with a time to its limit",
        |s| {
            s.lines().any(|l| {
                l.contains("top-runner")
                    && l.contains("guard-workload")
                    && l.contains(&server_pid.to_string())
                    && !l.contains(" - ")
            })
        },
    );
    let took = started.elapsed();
    let runner = row(&screen, "top-runner");
    eprintln!("after {took:?}:\n{screen}");
    // TASKS, LIMIT, +/s, ETA: 12.5 helpers a second toward 600.
    let cols: Vec<&str> = runner.split_whitespace().collect();
    let tasks: u64 = cols[1]
        .parse()
        .unwrap_or_else(|_| panic!("tasks in {runner:?}"));
    assert_eq!(cols[2], "600", "the limit: {runner:?}");
    let rate: f64 = cols[3]
        .trim_start_matches('+')
        .parse()
        .unwrap_or_else(|_| panic!("rate in {runner:?}"));
    assert!((5.0..=20.0).contains(&rate), "rate {rate}/s: {runner:?}");
    // The columns by the header's names (BIRTHS/s shows at 100 columns
    // and more).
    let header: Vec<&str> = row(&screen, "WOULD ACT ON").split_whitespace().collect();
    let at = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .unwrap_or_else(|| panic!("no {name} column: {header:?}"))
    };
    let births: f64 = cols[at("BIRTHS/s")]
        .parse()
        .unwrap_or_else(|_| panic!("births in {runner:?}"));
    assert!(
        (5.0..=20.0).contains(&births),
        "births {births}/s: {runner:?}"
    );
    let eta = cols[at("ETA")];
    let eta_secs: f64 = if let Some((m, s)) = eta.split_once('m') {
        m.parse::<f64>().expect("minutes") * 60.0
            + s.trim_end_matches('s').parse::<f64>().expect("seconds")
    } else {
        eta.trim_end_matches('s')
            .parse()
            .unwrap_or_else(|_| panic!("eta in {runner:?}"))
    };
    let expected = (600 - tasks) as f64 / rate;
    assert!(
        (eta_secs - expected).abs() <= expected * 0.2 + 2.0,
        "ETA {eta_secs} s, {expected:.0} s at the row's own rate: {runner:?}"
    );
    // The growing runner sorts before the idle cgroup.
    let first = screen.lines().position(|l| l.contains("top-runner"));
    let second = screen.lines().position(|l| l.contains("top-quiet"));
    if let (Some(a), Some(b)) = (first, second) {
        assert!(a < b, "the runner is listed first:\n{screen}");
    }
    assert!(screen.contains("guard top"), "{screen}");
    tmux.keys("s");
    tmux.wait_for(Duration::from_secs(5), "the growth sort", |s| {
        s.contains("cgroups by growth")
    });
    // 80×24 still shows the runner and who would be acted on.
    let small = top_session("top-small", 80, 24, false, &socket);
    let screen = small.wait_for(Duration::from_secs(10), "the runner at 80x24", |s| {
        s.lines()
            .any(|l| l.contains("runner") && l.contains("guard-workload"))
    });
    assert!(screen.lines().count() <= 24, "{screen}");
    assert!(screen.lines().all(|l| l.chars().count() <= 80), "{screen}");
    assert!(screen.contains("q quit"), "the keys line fits: {screen}");
    small.keys("q");
    tmux.keys("q");
    let until = Instant::now() + Duration::from_secs(5);
    while tmux.alive() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !tmux.alive(),
        "q did not end guard top:\n{}",
        tmux.capture(false)
    );

    // NO_COLOR: not one colour or reverse-video escape.
    let plain = top_session("top-plain", 100, 30, true, &socket);
    plain.wait_for(Duration::from_secs(10), "the runner", |s| {
        s.contains("top-runner")
    });
    let escaped = plain.capture(true);
    for sgr in ["\x1b[7m", "\x1b[31m", "\x1b[1m", "\x1b[38;"] {
        assert!(
            !escaped.contains(sgr),
            "NO_COLOR, yet {sgr:?} in:\n{escaped:?}"
        );
    }
    plain.keys("q");
    drop(agent.stop());
}

/// With no agent at its socket, `guard top` starts one of its own (log
/// only, scoped to the --cgroup given), shows a growing cgroup, and stops
/// that agent when it ends.
#[test]
fn top_without_an_agent_starts_its_own_and_stops_it() {
    let cg = TestCgroup::new("top-own", 600, 256 << 20);
    let dir = RootDir::new("top-own");
    let socket = dir.path.join("nobody.sock");
    let mut server = cg.spawn_ready(&["leak", "100"]);
    let _server = Defer(move || {
        let _ = server.kill();
        let _ = server.wait();
    });
    let guard = guard_bin();
    let tmux = Tmux::start(
        "top-own",
        120,
        40,
        &[("TERM", "xterm-256color")],
        &[
            guard.to_str().expect("utf8"),
            "--socket",
            socket.to_str().expect("utf8"),
            "--cgroup",
            cg.pids_dir().to_str().expect("utf8"),
            "top",
        ],
    );
    let screen = tmux.wait_for(Duration::from_secs(45), "its own agent's view", |s| {
        s.contains("own agent, log only")
            && s.lines()
                .any(|l| l.contains("top-own") && l.contains("guard-workload"))
    });
    eprintln!("{screen}");
    let own_agents = || -> Vec<u32> {
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains("guard-top-"))
            })
            .collect()
    };
    assert_eq!(own_agents().len(), 1, "one agent of top's own");
    tmux.keys("q");
    let until = Instant::now() + Duration::from_secs(10);
    while (tmux.alive() || !own_agents().is_empty()) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!tmux.alive(), "q did not end guard top");
    assert!(own_agents().is_empty(), "top's own agent outlived it");
    assert!(!socket.exists());
}

/// The report of a real action, read back through `guard incidents` and
/// `guard incident ID`: a runner whose four workers grow together is
/// killed whole, and the report's tree, captured before the signals,
/// names the runner and its four workers, each signalled, with the memory
/// each held.
#[test]
fn a_kill_leaves_a_report_whose_tree_names_what_it_signalled() {
    let cg = TestCgroup::new("report-runner", 64, 1 << 30);
    let scope = cg
        .memory_dir()
        .canonicalize()
        .expect("memory cgroup dir")
        .to_string_lossy()
        .into_owned();
    let mut agent = Agent::start(&["--cgroup", &scope, "--mem-action", "kill"]);
    let w = workload_bin();
    let script = format!(
        "for i in 1 2 3 4; do {} grow 60 400 120 > /dev/null & done; wait",
        w.display()
    );
    let mut runner = cg.spawn_bash(&script);
    let root = runner.id();
    let action = agent.wait_for(Duration::from_secs(30), "a memory action", |r| {
        r["kind"] == "action" && r["detector"] == "memory"
    });
    let _ = runner.wait();
    std::thread::sleep(Duration::from_millis(500));
    let stopped = agent.stop();
    let incident = action["incident"].as_str().expect("incident id");
    let report = stopped.report(incident);
    let tree = report["tree"].as_array().expect("tree");
    let runner_row = tree
        .iter()
        .find(|m| m["pid"] == root)
        .unwrap_or_else(|| panic!("the runner {root} is not in the tree: {report:#}"));
    assert_eq!(runner_row["signalled"], true, "{runner_row}");
    let workers: Vec<_> = tree
        .iter()
        .filter(|m| m["comm"] == "guard-workload" && m["ppid"] == root)
        .collect();
    assert_eq!(workers.len(), 4, "the four workers: {report:#}");
    for w in &workers {
        assert_eq!(w["signalled"], true, "{w}");
        let rss = w["rss_bytes"].as_u64().unwrap_or(0);
        assert!(rss >= 32 << 20, "a worker's memory before the kill: {w}");
    }
    assert_eq!(report["decision"]["detector"], "memory", "{report:#}");
    assert!(
        report["resolved"].is_object(),
        "the incident's end: {report:#}"
    );
    assert!(
        !report["readings"].as_array().expect("readings").is_empty(),
        "{report:#}"
    );
    // Rendered.
    let dir = stopped.dir.as_ref().expect("own dir").incidents();
    let list = Command::new(guard_bin())
        .arg("--incident-dir")
        .arg(&dir)
        .arg("incidents")
        .output()
        .expect("guard incidents");
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(row(&list, incident).contains("kill contained"), "{list}");
    let shown = Command::new(guard_bin())
        .arg("--incident-dir")
        .arg(&dir)
        .args(["incident", incident])
        .output()
        .expect("guard incident");
    assert!(shown.status.success());
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains("subtree as captured before signalling (5 members"),
        "{shown}"
    );
    assert_eq!(shown.matches("[signalled]").count(), 5, "{shown}");
    assert!(shown.contains(&format!("incident {incident}")), "{shown}");
    // A path is no id.
    let bad = Command::new(guard_bin())
        .arg("--incident-dir")
        .arg(&dir)
        .args(["incident", "../../etc/passwd"])
        .output()
        .expect("guard incident");
    assert_eq!(bad.status.code(), Some(1));
}
