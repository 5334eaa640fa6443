//! The crash-loop detector on this machine's kernel: a supervisor loop that
//! restarts a failing program, in a cgroup of the test's own.

use std::time::Duration;

use guard_tests::{Agent, TestCgroup, num, workload_bin};
use serde_json::Value;

/// The test cgroup's pids directory, as guard names it.
fn scope_of(cg: &TestCgroup) -> String {
    cg.pids_dir()
        .canonicalize()
        .expect("dir")
        .to_string_lossy()
        .into_owned()
}

/// A shell that restarts `guard-workload ARGS` `times` times, at once.
fn supervisor(cg: &TestCgroup, times: u32, args: &str) -> std::process::Child {
    supervisor_as(cg, std::path::Path::new("/bin/sh"), times, args)
}

/// The same loop, run by `shell`.
fn supervisor_as(
    cg: &TestCgroup,
    shell: &std::path::Path,
    times: u32,
    args: &str,
) -> std::process::Child {
    let script = format!(
        "for i in $(seq 1 {times}); do {} {args}; done; exit 0",
        workload_bin().display()
    );
    cg.command(shell)
        .args(["-c", &script])
        .spawn()
        .expect("spawn the supervisor")
}

/// An agent scoped to `scope` with `--crashloop-action stop`, a loop
/// sustained after `stop_after` (`N/SECS`), exits shown, and `extra` flags.
fn stopping_agent(scope: &str, stop_after: &str, extra: &[&str]) -> Agent {
    let mut args = vec![
        "--cgroup",
        scope,
        "--events",
        "exit",
        "--crashloop-action",
        "stop",
        "--crashloop-stop-after",
        stop_after,
    ];
    args.extend_from_slice(extra);
    Agent::start(&args)
}

#[test]
fn a_restart_loop_of_a_crashing_program_is_flagged_at_the_nth_crash() {
    let cg = TestCgroup::new("crashloop", 64, 256 << 20);
    let scope = scope_of(&cg);
    let mut agent = Agent::start(&[
        "--cgroup",
        &scope,
        "--events",
        "exit",
        "--crashloop",
        "5/60",
    ]);
    // Exits with code 3 after 50 ms, restarted 8 times.
    let mut sup = supervisor(&cg, 8, "fail 3 50");
    let sup_pid = u64::from(sup.id());
    let alert = agent.wait_for(Duration::from_secs(20), "a crash-loop alert", |r| {
        r["kind"] == "alert"
    });
    sup.wait().expect("supervisor");
    let stopped = agent.stop();

    assert_eq!(alert["detector"], "crashloop", "{alert}");
    assert_eq!(
        alert["program"],
        workload_bin().to_string_lossy().as_ref(),
        "{alert}"
    );
    assert_eq!(alert["cgroup"], scope.as_str(), "{alert}");
    assert_eq!(num(&alert, "crashes"), 5, "at the 5th crash: {alert}");
    assert_eq!(
        alert["statuses"],
        serde_json::json!(vec!["exit 3"; 5]),
        "{alert}"
    );
    assert_eq!(num(&alert["supervisor"], "pid"), sup_pid, "{alert}");
    assert_eq!(alert["supervisor"]["comm"], "sh", "{alert}");
    // The alert came right after the 5th failing exit the agent saw.
    let failures: Vec<&Value> = stopped
        .of_kind("exit")
        .filter(|r| r["exit_code"] == 3 && r["comm"] == "guard-workload")
        .collect();
    assert_eq!(failures.len(), 8, "every crash is seen");
    assert_eq!(num(&alert, "last_pid"), num(failures[4], "pid"), "{alert}");
    assert_eq!(stopped.of_kind("alert").count(), 1, "one alert per window");
}

#[test]
fn clean_exits_and_slow_failures_are_no_crash_loop() {
    let cg = TestCgroup::new("crashloop-quiet", 64, 256 << 20);
    let scope = cg.pids_dir().to_str().expect("utf8").to_owned();
    // Two failures in 60 s would do, but each one runs longer than 1 s.
    let agent = Agent::start(&[
        "--cgroup",
        &scope,
        "--events",
        "exit",
        "--crashloop",
        "2/60",
        "--crashloop-lifetime",
        "1",
    ]);
    let mut clean = supervisor(&cg, 10, "exit 0");
    let mut slow = supervisor(&cg, 3, "fail 1 1300");
    assert!(clean.wait().expect("clean").success());
    assert!(slow.wait().expect("slow").success());
    let stopped = agent.stop();
    let failures = stopped
        .of_kind("exit")
        .filter(|r| r["exit_code"] == 1)
        .count();
    assert_eq!(failures, 3, "the slow failures happened");
    let alerts: Vec<&Value> = stopped.of_kind("alert").collect();
    assert!(alerts.is_empty(), "{alerts:?}");
}

/// `--crashloop-action stop` stops the restarting supervisor (a shell loop
/// in scope): SIGSTOP, so no more restarts, and nothing else is touched.
#[test]
fn the_supervisor_of_a_crash_loop_is_stopped_on_request() {
    let cg = TestCgroup::new("crashstop", 64, 256 << 20);
    let scope = scope_of(&cg);
    let mut agent = Agent::start(&[
        "--cgroup",
        &scope,
        "--events",
        "exec",
        "--crashloop-action",
        "stop",
        // sustained at the 5th crash (the default's two minutes are
        // `a_busy_restart_loop_is_stopped_only_once_sustained`'s)
        "--crashloop-stop-after",
        "5/0",
    ]);
    let mut sup = supervisor(&cg, 1000, "fail 3 50");
    let sup_pid = u64::from(sup.id());
    let action = agent.wait_for(Duration::from_secs(20), "the stop", |r| {
        r["kind"] == "action" && r["detector"] == "crashloop"
    });
    let state = || {
        std::fs::read_to_string(format!("/proc/{sup_pid}/stat"))
            .ok()
            .and_then(|s| s.rfind(')').map(|i| s[i + 2..i + 3].to_owned()))
    };
    assert_eq!(
        state().as_deref(),
        Some("T"),
        "the supervisor is not stopped"
    );
    // No restart after the stop (the program running then may finish).
    std::thread::sleep(Duration::from_millis(600));
    let stopped = agent.stop();
    assert_eq!(state().as_deref(), Some("T"), "the supervisor ran again");

    assert_eq!(num(&action["offender"], "pid"), sup_pid, "{action}");
    assert_eq!(action["action"], "stop", "{action}");
    assert_eq!(action["signals"], "SIGSTOP", "{action}");
    assert_eq!(action["outcome"]["contained"], true, "{action}");
    let alert = stopped
        .of_kind("alert")
        .find(|r| r["detector"] == "crashloop")
        .expect("alert");
    assert_eq!(alert["action"], "stop", "{alert}");
    assert_eq!(num(alert, "crashes"), 5, "{alert}");
    let action_at = num(&action, "boot_ns");
    let restarts: Vec<&Value> = stopped
        .of_kind("exec")
        .filter(|r| num(r, "boot_ns") > action_at + 100_000_000)
        .filter(|r| r["comm"] == "guard-workload")
        .collect();
    assert!(
        restarts.is_empty(),
        "restarted after the stop: {restarts:?}"
    );
    cg.kill_all();
    let _ = sup.wait();
}

/// A service manager is never stopped: the same loop run by a shell named
/// `runsv` is only reported, with the reason.
#[test]
fn a_service_manager_supervising_a_crash_loop_is_not_stopped() {
    let cg = TestCgroup::new("crashmgr", 64, 256 << 20);
    let scope = scope_of(&cg);
    // A service manager is known by its executable, a root-owned file in
    // root's directories (here one `--protect` names by path), never by
    // its name: a copy of sh called runsv in /tmp is no service manager.
    let root = guard_tests::RootDir::new("runsv");
    let runsv = root.path.join("runsv");
    std::fs::copy("/bin/sh", &runsv).expect("copy sh");
    let mut agent = Agent::start(&[
        "--cgroup",
        &scope,
        "--crashloop-action",
        "stop",
        "--crashloop-stop-after",
        "5/0",
        "--protect",
        runsv.to_str().expect("utf8"),
    ]);
    let mut sup = supervisor_as(&cg, &runsv, 8, "fail 3 50");
    let alert = agent.wait_for(Duration::from_secs(20), "the alert", |r| {
        r["kind"] == "alert" && r["detector"] == "crashloop"
    });
    assert!(sup.wait().expect("wait").success(), "runsv was disturbed");
    let stopped = agent.stop();
    assert_eq!(alert["supervisor"]["comm"], "runsv", "{alert}");
    assert_eq!(alert["action"], "log", "{alert}");
    assert!(
        alert["not_stopped_because"]
            .as_str()
            .is_some_and(|w| w.contains("service manager")),
        "{alert}"
    );
    assert!(stopped.of_kind("action").next().is_none());
}

/// The same loop under a copy of sh that only calls itself runsv, where
/// anyone could have put it: an ordinary restart loop, stopped.
#[test]
fn a_supervisor_named_like_a_service_manager_is_stopped() {
    let cg = TestCgroup::new("crashfake", 64, 256 << 20);
    let scope = scope_of(&cg);
    let dir = std::env::temp_dir().join(format!("guard-test-runsv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let _cleanup = guard_tests::Defer(|| {
        let _ = std::fs::remove_dir_all(&dir);
    });
    let runsv = dir.join("runsv");
    std::fs::copy("/bin/sh", &runsv).expect("copy sh");
    let mut agent = Agent::start(&[
        "--cgroup",
        &scope,
        "--crashloop-action",
        "stop",
        "--crashloop-stop-after",
        "5/0",
    ]);
    let mut sup = supervisor_as(&cg, &runsv, 30, "fail 3 50");
    let action = agent.wait_for(Duration::from_secs(20), "the stop", |r| {
        r["kind"] == "action" && r["detector"] == "crashloop"
    });
    // SAFETY: resumes our own child so that it can be ended.
    unsafe { libc::kill(sup.id() as i32, libc::SIGCONT) };
    let _ = sup.kill();
    let _ = sup.wait();
    drop(agent.stop());
    assert_eq!(action["action"], "stop", "{action}");
    assert_eq!(action["offender"]["comm"], "runsv", "{action}");
    assert!(
        action["offender"]["not_spared_because"]
            .as_str()
            .is_some_and(|w| w.contains("not a trusted runsv")),
        "{action}"
    );
    assert_eq!(action["outcome"]["contained"], true, "{action}");
}

/// A script whose utilities answer with their exit status (grep finds
/// nothing, test is false, diff sees a difference), ten times each with the
/// same arguments, as a polling loop does: no crash loop, and with
/// `--crashloop-action stop` the script is never stopped.
#[test]
fn a_script_full_of_failing_greps_is_not_stopped() {
    let cg = TestCgroup::new("crash-greps", 64, 256 << 20);
    let scope = scope_of(&cg);
    // Sustained at the 3rd crash: only the shape of the script keeps it
    // from being stopped.
    let agent = stopping_agent(&scope, "3/0", &["--crashloop", "3/60"]);
    let script = "for i in $(seq 1 10); do \
        /bin/grep -q no-such-text /etc/hostname; \
        /usr/bin/test -e /no/such/file; \
        /usr/bin/diff /etc/hostname /etc/passwd > /dev/null; \
        /bin/false; \
        done; exit 0";
    let mut child = cg
        .command("/bin/sh")
        .args(["-c", script])
        .spawn()
        .expect("the script");
    let status = ends_within(&mut child, 30, "the script");
    let stopped = agent.stop();
    assert!(status.success(), "the script was disturbed: {status}");
    let answers = stopped
        .of_kind("exit")
        .filter(|r| r["exit_code"] == 1)
        .count();
    assert!(answers >= 40, "only {answers} utilities exited 1: no test");
    let alerts: Vec<&Value> = stopped.of_kind("alert").collect();
    assert!(alerts.is_empty(), "{alerts:?}");
    assert_eq!(stopped.of_kind("action").count(), 0);
}

/// `--crashloop-ignore` and `--crashloop off` silence a real restart loop.
#[test]
fn an_ignored_or_switched_off_crash_loop_raises_nothing() {
    let cg = TestCgroup::new("crash-ignored", 64, 256 << 20);
    let scope = scope_of(&cg);
    for switch in [
        &["--crashloop-ignore", "guard-workload$"][..],
        &["--crashloop", "off"],
    ] {
        let mut args = vec!["--cgroup", scope.as_str(), "--events", "exit"];
        args.extend_from_slice(switch);
        let agent = Agent::start(&args);
        let mut sup = supervisor(&cg, 6, "fail 3 20");
        assert!(sup.wait().expect("supervisor").success());
        let stopped = agent.stop();
        let crashes = stopped
            .of_kind("exit")
            .filter(|r| r["exit_code"] == 3)
            .count();
        assert_eq!(crashes, 6, "{switch:?}: the loop ran");
        assert_eq!(stopped.of_kind("alert").count(), 0, "{switch:?}");
        assert_eq!(
            stopped.records[0]["off"].as_array().map(Vec::len),
            Some(usize::from(switch[1] == "off")),
            "{switch:?}"
        );
    }
}

/// Waits up to `secs` for `child` to end by itself; panics, naming `what`,
/// if it does not (a stopped script never would: the cgroup's drop kills
/// it then).
fn ends_within(child: &mut std::process::Child, secs: u64, what: &str) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        let state = std::fs::read_to_string(format!("/proc/{}/stat", child.id()))
            .ok()
            .and_then(|s| s.rfind(')').map(|i| s[i + 2..i + 3].to_owned()));
        assert_ne!(state.as_deref(), Some("T"), "{what} was stopped");
        assert!(
            std::time::Instant::now() < deadline,
            "{what} did not end within {secs} s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Ordinary scripts, tried as a new user would, with
/// `--crashloop-action stop` and a loop sustained at its 5th crash (so only
/// the rule's reading of what the script does keeps them running):
/// - a boot script waiting for a service, `until curl ...; do sleep 0.2;
///   done`, curl refused (exit 7) until the service comes up 4 s later;
/// - a checking script, `ls` and `stat` of files that are not there (exit
///   2 and 1), 300 rounds with no pause;
/// - a status poll, `pg_isready` of a database that is down (exit 2) and
///   `systemctl is-active` of a unit that is not there, every 0.1 s, 40
///   times;
/// - a backoff retry, curl refused five times, 0.1 to 1.6 s apart.
///
/// None raises a crash-loop alert, none is stopped, each ends by itself
/// with success.
#[test]
fn retry_loops_checking_scripts_and_status_polls_are_not_crash_loops() {
    let cg = TestCgroup::new("crash-scripts", 128, 512 << 20);
    let scope = scope_of(&cg);
    let dir = guard_tests::RootDir::new("crash-scripts");
    let port = 20_000 + std::process::id() % 20_000;
    let agent = stopping_agent(&scope, "5/0", &[]);
    let wait_for_service = format!(
        "(sleep 4; exec python3 -m http.server -b 127.0.0.1 {port} -d {d}) & \
         until curl -s -o /dev/null http://127.0.0.1:{port}/; do sleep 0.2; done; \
         kill $!",
        d = dir.path.display()
    );
    let checks = format!(
        "for i in $(seq 300); do ls {d}/missing > /dev/null 2>&1; stat {d}/missing > /dev/null 2>&1; done; exit 0",
        d = dir.path.display()
    );
    let poll = "for i in $(seq 40); do pg_isready -q -h 127.0.0.1 -p 1; \
        systemctl is-active --quiet nosuch.service 2> /dev/null; sleep 0.1; done; exit 0";
    let backoff = "for d in 0.1 0.2 0.4 0.8 1.6; do curl -s -o /dev/null http://127.0.0.1:1/ && break; \
        sleep $d; done; exit 0";
    let mut scripts: Vec<(&str, std::process::Child)> = [
        ("the wait for a service", wait_for_service.as_str()),
        ("the checking script", checks.as_str()),
        ("the status poll", poll),
        ("the backoff retry", backoff),
    ]
    .into_iter()
    .map(|(what, script)| (what, cg.spawn_bash(script)))
    .collect();
    for (what, child) in &mut scripts {
        let status = ends_within(child, 60, what);
        assert!(status.success(), "{what} was disturbed: {status}");
    }
    let stopped = agent.stop();
    // The scripts did fail their commands, many times.
    let failures = |code: u64| {
        stopped
            .of_kind("exit")
            .filter(|r| r["exit_code"] == code)
            .count()
    };
    assert!(failures(7) >= 10, "curl was refused {} times", failures(7));
    assert!(
        failures(2) >= 300,
        "ls and pg_isready failed {} times",
        failures(2)
    );
    let alerts: Vec<&Value> = stopped.of_kind("alert").collect();
    assert!(alerts.is_empty(), "{alerts:#?}");
    assert_eq!(stopped.of_kind("action").count(), 0);
}

/// Seed 003's shape, `while true; do ./server; done`, the server dying
/// 30 ms after each start: an early report at the 5th crash that says it is
/// not sustained yet (no stop), then, once the loop has gone on for
/// `--crashloop-stop-after 40/6` (40 crashes over 6 s, the program
/// running most of the time), a sustained alert and the stop.
#[test]
fn a_busy_restart_loop_is_stopped_only_once_sustained() {
    let cg = TestCgroup::new("crash-sustain", 64, 256 << 20);
    let scope = scope_of(&cg);
    let mut agent = stopping_agent(&scope, "40/6", &[]);
    let started = std::time::Instant::now();
    let mut sup = cg.spawn_bash(&format!(
        "while true; do {} fail 3 30; done",
        workload_bin().display()
    ));
    let sup_pid = u64::from(sup.id());
    let action = agent.wait_for(Duration::from_secs(30), "the stop", |r| {
        r["kind"] == "action" && r["detector"] == "crashloop"
    });
    let took = started.elapsed();
    let stopped = agent.stop();
    cg.kill_all();
    let _ = sup.wait();
    let alerts: Vec<&Value> = stopped
        .of_kind("alert")
        .filter(|r| r["detector"] == "crashloop")
        .collect();
    let early = alerts.first().expect("an early report");
    assert_eq!(
        (early["sustained"].as_bool(), early["action"].as_str()),
        (Some(false), Some("log")),
        "{early}"
    );
    assert_eq!(num(early, "crashes"), 5, "{early}");
    assert!(
        early["not_stopped_because"]
            .as_str()
            .is_some_and(|w| w.contains("not sustained")),
        "{early}"
    );
    let sustained = alerts
        .iter()
        .find(|a| a["sustained"] == true)
        .expect("a sustained alert");
    assert_eq!(sustained["action"], "stop", "{sustained}");
    assert!(num(sustained, "loop_crashes") >= 40, "{sustained}");
    assert!(sustained["loop_secs"].as_f64() >= Some(6.0), "{sustained}");
    assert!(sustained["busy"].as_f64() >= Some(0.5), "{sustained}");
    assert!(took >= Duration::from_secs(6), "stopped after {took:?}");
    assert_eq!(num(&action["offender"], "pid"), sup_pid, "{action}");
    assert_eq!(action["outcome"]["contained"], true, "{action}");
}

/// A program that retries by itself, paced (a Python loop: run the
/// command, sleep 0.5 s): each run is back to back with the last, so it is
/// reported as a loop, but the program ran a few percent of the time: never
/// sustained, never stopped, however long it goes.
#[test]
fn a_paced_restart_is_reported_but_not_stopped() {
    let cg = TestCgroup::new("crash-paced", 64, 256 << 20);
    let scope = scope_of(&cg);
    let agent = stopping_agent(&scope, "5/0", &[]);
    let script = format!(
        "import subprocess, time\nfor i in range(14):\n    subprocess.run(['{}', 'fail', '3', '20'])\n    time.sleep(0.5)\n",
        workload_bin().display()
    );
    let mut child = cg
        .command("python3")
        .args(["-c", &script])
        .spawn()
        .expect("python3");
    let status = ends_within(&mut child, 60, "the paced retry");
    let stopped = agent.stop();
    assert!(status.success(), "{status}");
    let alert = stopped
        .of_kind("alert")
        .find(|r| r["detector"] == "crashloop")
        .expect("reported");
    assert_eq!(alert["sustained"], false, "{alert}");
    assert!(alert["busy"].as_f64() < Some(0.2), "{alert}");
    assert_eq!(alert["action"], "log", "{alert}");
    assert_eq!(stopped.of_kind("action").count(), 0);
}

/// A real supervisor: runit's runsv (from Debian; `cargo xtask setup`
/// installs it) restarting a service whose `run` dies at once. runsv waits
/// a second between restarts: a loop, reported with runsv as its
/// supervisor; runsv is a trusted service manager, and the loop is paced:
/// nothing is stopped.
#[test]
fn a_crash_loop_under_runit_is_reported_and_runsv_is_left_alone() {
    let runsv = std::path::Path::new("/usr/bin/runsv");
    assert!(
        runsv.exists(),
        "runit is not installed: run `cargo xtask setup` (it installs runit)"
    );
    let cg = TestCgroup::new("crash-runit", 64, 256 << 20);
    let scope = scope_of(&cg);
    let dir = guard_tests::RootDir::new("runit-svc");
    let run = dir.path.join("run");
    std::fs::write(
        &run,
        format!("#!/bin/sh\nexec {} fail 3 20\n", workload_bin().display()),
    )
    .expect("write run");
    std::fs::set_permissions(&run, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let mut agent = stopping_agent(&scope, "5/0", &[]);
    let mut sv = cg.command(runsv).arg(&dir.path).spawn().expect("runsv");
    let sv_pid = u64::from(sv.id());
    let alert = agent.wait_for(Duration::from_secs(30), "the crash-loop alert", |r| {
        r["kind"] == "alert" && r["detector"] == "crashloop"
    });
    let state = std::fs::read_to_string(format!("/proc/{sv_pid}/stat")).expect("runsv's stat");
    let stopped = agent.stop();
    let _ = sv.kill();
    let _ = sv.wait();
    cg.kill_all();
    assert_eq!(num(&alert["supervisor"], "pid"), sv_pid, "{alert}");
    assert_eq!(alert["supervisor"]["comm"], "runsv", "{alert}");
    assert_eq!(
        alert["program"],
        workload_bin().to_string_lossy().as_ref(),
        "{alert}"
    );
    assert_eq!(alert["action"], "log", "{alert}");
    // Spared as a service manager (known by /usr/bin/runsv's inode), not
    // only because the loop is paced.
    assert!(
        alert["not_stopped_because"]
            .as_str()
            .is_some_and(|w| w.contains("service manager")),
        "{alert}"
    );
    assert!(!state.contains(") T "), "runsv was stopped: {state}");
    assert_eq!(stopped.of_kind("action").count(), 0);
}
