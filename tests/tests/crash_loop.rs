//! The crash-loop detector on this machine's kernel: a supervisor loop that
//! restarts a failing program, in a cgroup of the test's own.

use std::time::Duration;

use guard_tests::{Agent, TestCgroup, num, workload_bin};
use serde_json::Value;

/// A shell that restarts `guard-workload ARGS` `times` times, 50 ms apart.
fn supervisor(cg: &TestCgroup, times: u32, args: &str) -> std::process::Child {
    let script = format!(
        "for i in $(seq 1 {times}); do {} {args}; sleep 0.05; done",
        workload_bin().display()
    );
    cg.command("/bin/sh")
        .args(["-c", &script])
        .spawn()
        .expect("spawn the supervisor")
}

#[test]
fn a_restart_loop_of_a_crashing_program_is_flagged_at_the_nth_crash() {
    let cg = TestCgroup::new("crashloop", 64, 256 << 20);
    let scope = cg
        .pids_dir()
        .canonicalize()
        .expect("dir")
        .to_string_lossy()
        .into_owned();
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
