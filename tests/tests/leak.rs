//! The leak rule on this machine's kernel: a steady spawner and a pool that
//! plateaus, each in a cgroup of the test's own.

use std::time::{Duration, Instant};

use guard_tests::{Agent, TestCgroup, num};
use serde_json::Value;

/// The leak rule, with a window short enough for a test: a spawner adding
/// four long-lived processes a second is reported within the window (with
/// its rate, the counts, and the projection toward pids.max), a pool that
/// starts 40 workers once and keeps them is not.
#[test]
fn a_steady_spawner_is_a_leak_and_a_pool_is_not() {
    let leaky = TestCgroup::new("leak", 500, 512 << 20);
    let steady = TestCgroup::new("pool", 500, 512 << 20);
    let (a, b) = (
        leaky.pids_dir().to_str().expect("utf8").to_owned(),
        steady.pids_dir().to_str().expect("utf8").to_owned(),
    );
    let mut agent = Agent::start(&[
        "--cgroup",
        &a,
        "--cgroup",
        &b,
        "--leak-window",
        "10",
        "--leak-growth",
        "8",
        "--events",
        "exit",
    ]);
    let started = Instant::now();
    let mut spawner = leaky.spawn_bash("while :; do sleep 3600 & sleep 0.25; done");
    let mut pool = steady.spawn_bash("for i in $(seq 40); do sleep 3600 & done; wait");
    let alert = agent.wait_for(Duration::from_secs(25), "a leak alert", |r| {
        r["kind"] == "alert" && r["detector"] == "leak"
    });
    let took = started.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let stopped = agent.stop();
    assert_eq!(alert["cgroup"], a.as_str(), "{alert}");
    assert_eq!(
        num(&alert["offender"], "pid"),
        u64::from(spawner.id()),
        "{alert}"
    );
    assert!(
        num(&alert, "tasks_now") >= num(&alert, "tasks_before") + 8,
        "{alert}"
    );
    let per_min = alert["per_min"].as_f64().expect("per_min");
    assert!(
        (100.0..=400.0).contains(&per_min),
        "+4/s is 240/min: {alert}"
    );
    assert_eq!(num(&alert, "pids_limit"), 500, "{alert}");
    assert!(
        alert["pids_eta_secs"].as_f64().is_some_and(|e| e > 0.0),
        "{alert}"
    );
    assert!(alert["runs_out_first"].is_string(), "{alert}");
    assert_eq!(alert["action"], "log", "{alert}");
    assert!(took < Duration::from_secs(15), "the alert took {took:?}");
    let pool_alerts: Vec<&Value> = stopped
        .of_kind("alert")
        .filter(|r| r["cgroup"] == b.as_str())
        .collect();
    assert!(pool_alerts.is_empty(), "{pool_alerts:?}");
    assert!(leaky.pids_refused() == 0 && steady.pids_refused() == 0);
    let _ = spawner.kill();
    let _ = pool.kill();
    leaky.kill_all();
    steady.kill_all();
    let _ = spawner.wait();
    let _ = pool.wait();
}
