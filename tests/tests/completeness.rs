//! Nothing is lost silently: under a fork storm every fork is printed, or
//! the shortfall is exactly covered by the reported losses.

use guard_tests::{Agent, TestCgroup, num, run};

#[test]
fn every_fork_of_a_storm_is_printed_or_counted_lost() {
    const FORKS: u64 = 30_000;
    let cg = TestCgroup::new("storm", 64, 256 << 20);
    let agent = Agent::start(&[
        "--cgroup",
        cg.pids_dir().to_str().expect("utf8"),
        "--events",
        "fork",
    ]);
    let (status, out) = run(&mut cg.workload(&["forks", &FORKS.to_string()]));
    assert!(status.success(), "workload failed");
    let stopped = agent.stop();
    let wl: serde_json::Value = serde_json::from_str(out.trim()).expect("workload JSON");
    assert_eq!(
        num(&wl, "forks"),
        FORKS,
        "the workload forked fewer times than asked"
    );
    let wpid = num(&wl, "pid");

    let printed = stopped
        .of_kind("fork")
        .filter(|r| num(r, "parent_tgid") == wpid)
        .count() as u64;
    let summary = stopped.summary();
    let lost_forks = summary["lost_ring_full"]["fork"].as_u64().unwrap_or(0)
        + summary["lost_read_failed"]["fork"].as_u64().unwrap_or(0)
        + num(summary, "lost_queue_full");
    if lost_forks == 0 {
        assert_eq!(
            printed, FORKS,
            "nothing reported lost, so every fork must be printed; summary {summary}"
        );
    } else {
        assert!(
            FORKS - printed <= lost_forks,
            "{printed} printed, {lost_forks} reported lost of {FORKS}"
        );
    }
    assert!(num(&summary["seen"], "fork") >= FORKS, "{summary}");
    assert_eq!(num(summary, "undecodable"), 0);
}
