//! Start-up, shutdown and failure: signals, SIGKILL, a closed stdout, and
//! the errors an operator can meet.

use std::{
    collections::BTreeSet,
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use guard_tests::{Agent, guard_bin, num};

/// Ids of every BPF program loaded in the kernel now.
fn loaded_program_ids() -> BTreeSet<u32> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| p.id())
        .collect()
}

/// Waits until none of `ids` is loaded (program release is asynchronous).
fn assert_unloaded(ids: &BTreeSet<u32>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left: BTreeSet<u32> = loaded_program_ids().intersection(ids).copied().collect();
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "programs {left:?} are still loaded"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigint_and_sigterm_detach_and_summarise() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        let before = loaded_program_ids();
        let agent = Agent::start(&[]);
        let ours: BTreeSet<u32> = loaded_program_ids().difference(&before).copied().collect();
        let probes = agent.start["probes"].as_array().map_or(0, Vec::len);
        // One program per probe, except cgroup_attach_task serving two
        // tracepoints, and reclaim_begin and reclaim_end two each (direct
        // and memcg reclaim).
        assert_eq!(ours.len(), probes - 3, "programs loaded by the agent");
        let stopped = agent.stop_with(signal);
        assert!(
            stopped.status.success(),
            "exit status {} after signal {signal}",
            stopped.status
        );
        let summary = stopped.summary();
        assert_eq!(num(summary, "lost"), 0, "{summary}");
        assert!(summary["seen"].is_object(), "{summary}");
        assert!(!stopped.stderr.contains("panicked"), "{}", stopped.stderr);
        assert_unloaded(&ours);
    }
}

#[test]
fn sigkill_leaves_nothing_attached() {
    let before = loaded_program_ids();
    let agent = Agent::start(&[]);
    let ours: BTreeSet<u32> = loaded_program_ids().difference(&before).copied().collect();
    assert!(!ours.is_empty());
    let stopped = agent.stop_with(libc::SIGKILL);
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&stopped.status),
        Some(libc::SIGKILL)
    );
    assert_unloaded(&ours);
}

#[test]
fn a_closed_stdout_ends_it_quietly() {
    let mut child = Command::new(guard_bin())
        .args(guard_tests::NO_REPORTS)
        .args(["--json", "--events", "fork,exec,exit"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn guard");
    let stdout = child.stdout.take().expect("stdout");
    // As `guard | head -1`: read one line, then close the pipe.
    let lines: Vec<String> = BufReader::new(stdout)
        .lines()
        .take(1)
        .map_while(Result::ok)
        .collect();
    assert_eq!(lines.len(), 1, "the start record");
    // The reader above dropped the pipe; make some events to write.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let _ = Command::new("/bin/true").status();
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "guard kept running with its stdout closed"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("stderr");
    assert!(status.success(), "exit status {status}; stderr:\n{stderr}");
    assert!(
        !stderr.contains("panicked")
            && !stderr.contains(" ERROR ")
            && !stderr.contains("guard: error"),
        "stderr:\n{stderr}"
    );
}

/// Runs guard with `args` (expecting it to fail) and returns (code, stderr).
fn fails(cmd: &mut Command) -> (i32, String) {
    let out = cmd.stdout(Stdio::null()).output().expect("run guard");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !stderr.contains("panicked"),
        "a panic instead of an error:\n{stderr}"
    );
    (out.status.code().unwrap_or(-1), stderr)
}

#[test]
fn errors_say_what_is_wrong_and_what_to_do() {
    let (code, err) = fails(Command::new(guard_bin()).args(["--events", "fork,forks"]));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("unknown event kind \"forks\"") && err.contains("oom_kill"),
        "{err}"
    );

    let (code, err) = fails(Command::new(guard_bin()).args(["--ring-buffer-mib", "3"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("power of two"), "{err}");

    let (code, err) = fails(Command::new(guard_bin()).args(["--btf", "/nonexistent/vmlinux"]));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("BTF is missing") && err.contains("CONFIG_DEBUG_INFO_BTF"),
        "{err}"
    );

    let (code, err) =
        fails(Command::new(guard_bin()).args(["--cgroup", "/sys/fs/cgroup/no-such-cgroup"]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("does not exist"), "{err}");

    let (code, err) = fails(Command::new(guard_bin()).args(["--cgroup", "/tmp"]));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("is not a cgroup directory") && err.contains("cgroup hierarchies here"),
        "{err}"
    );

    // Root without capabilities: an empty bounding set leaves none after exec.
    let (code, err) = fails(
        Command::new("setpriv")
            .args(["--bounding-set", "-all", "--"])
            .arg(guard_bin()),
    );
    assert_eq!(code, 1, "{err}");
    // It is root already: the advice is to grant the capabilities.
    assert!(
        err.contains("lacks CAP_BPF and CAP_PERFMON")
            && err.contains("runs as root but without them"),
        "{err}"
    );
}

#[test]
fn mounts_tracefs_when_it_is_missing() {
    // In a private mount namespace, so the host's tracefs stays mounted.
    let script = format!(
        "set -e; umount /sys/kernel/tracing 2>/dev/null || true; umount /sys/kernel/debug/tracing 2>/dev/null || true; \
         ! grep -q ' tracefs ' /proc/self/mountinfo; \
         timeout --preserve-status -s INT 3 {} {} --json --events oom_kill >/dev/null; grep -q ' /sys/kernel/tracing ' /proc/self/mountinfo",
        guard_bin().display(),
        // No report directory or socket outside the test's own.
        "--incident-dir '' --socket ''"
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("unshare");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "status {}; stderr:\n{stderr}",
        out.status
    );
    assert!(
        stderr.contains("tracefs was not mounted: mounted it at /sys/kernel/tracing"),
        "{stderr}"
    );
}

/// Under systemd (`Type=notify`, `WatchdogSec=`): READY=1 once attached,
/// WATCHDOG=1 at half the interval while it runs, STOPPING=1 when asked to
/// stop. A datagram socket of the test's own plays the service manager
/// (this machine's PID 1 is not systemd).
#[test]
fn under_a_service_manager_it_says_ready_pings_the_watchdog_and_says_stopping() {
    use std::os::unix::net::UnixDatagram;
    let path = std::env::temp_dir().join(format!("guard-test-notify-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let manager = UnixDatagram::bind(&path).expect("bind the notify socket");
    let _cleanup = guard_tests::Defer(|| {
        let _ = std::fs::remove_file(&path);
    });
    manager
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut child = Command::new(guard_bin())
        .args(guard_tests::NO_REPORTS)
        .args(["--json", "--events", "none"])
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "1000000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn guard");
    let pid = child.id() as i32;
    let _kill = guard_tests::kill_on_drop(child.id());
    let mut buf = [0u8; 512];
    let mut next = || {
        let n = manager.recv(&mut buf).expect("a notification within 30 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let first = next();
    assert!(
        first.lines().any(|l| l == "READY=1") && first.contains("STATUS="),
        "first notification: {first:?}"
    );
    // Half of 1 s: at least three pings in the next 1.8 s.
    let started = Instant::now();
    let mut pings = 0;
    while started.elapsed() < Duration::from_millis(1800) {
        if next().lines().any(|l| l == "WATCHDOG=1") {
            pings += 1;
        }
    }
    assert!(pings >= 3, "{pings} watchdog pings in 1.8 s");
    // SAFETY: signals our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let stopping = loop {
        let n = next();
        if !n.contains("WATCHDOG=1") {
            break n;
        }
    };
    assert_eq!(stopping.trim(), "STOPPING=1");
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status}");
}

/// `guard check` explains this host and exits 0 here; with BTF missing it
/// says guard cannot run and exits 1.
#[test]
fn check_explains_the_host_and_fails_when_guard_cannot_run() {
    let out = Command::new(guard_bin())
        .arg("check")
        .output()
        .expect("guard check");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{text}", out.status);
    let row = |item: &str| {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(item))
            .unwrap_or_else(|| panic!("no {item} row in:\n{text}"))
            .to_owned()
    };
    assert!(row("BTF").contains(" ok "), "{text}");
    assert!(
        row("tp_btf/sched_process_fork").contains("present"),
        "{text}"
    );
    assert!(
        row("cgroups").contains("hybrid") || row("cgroups").contains("v2"),
        "{text}"
    );
    assert!(text.ends_with("guard can run here.\n"), "{text}");

    let out = Command::new(guard_bin())
        .args(["--btf", "/nonexistent/vmlinux", "check"])
        .output()
        .expect("guard check");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(row_has(&text, "BTF", "MISSING"), "{text}");
    assert!(text.contains("guard cannot run here"), "{text}");
}

fn row_has(text: &str, item: &str, word: &str) -> bool {
    text.lines()
        .any(|l| l.split_whitespace().next() == Some(item) && l.contains(word))
}
