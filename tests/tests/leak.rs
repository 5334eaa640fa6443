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

/// The default rule, in real time, on four cgroups at once (each with a
/// pids.max far away, 4096, so no limit is near):
/// - a server leaking a helper a second, and one leaking two a second:
///   each named within 3 minutes of its start, with its rate and the
///   projections to the host's task table and memory;
/// - a pool that scales up to 200 workers over 2 minutes, then holds them,
///   and a pool of 40 workers recycled every few seconds: never named.
#[test]
fn leaks_of_one_and_two_a_second_are_named_in_minutes_and_ramps_are_not() {
    let groups: Vec<(&str, &str)> = vec![
        ("leak-1s", "while :; do sleep 3600 & sleep 1; done"),
        ("leak-2s", "while :; do sleep 3600 & sleep 0.5; done"),
        (
            "ramp",
            "for i in $(seq 200); do sleep 3600 & sleep 0.6; done; wait",
        ),
        (
            "recycled",
            "for i in $(seq 40); do (while :; do sleep $((RANDOM % 6 + 2)); done) & done; wait",
        ),
    ];
    let cgroups: Vec<TestCgroup> = groups
        .iter()
        .map(|(name, _)| TestCgroup::new(name, 4096, 1 << 30))
        .collect();
    let dirs: Vec<String> = cgroups
        .iter()
        .map(|c| c.pids_dir().to_str().expect("utf8").to_owned())
        .collect();
    let mut args = vec!["--events", "exit"];
    for d in &dirs {
        args.extend(["--cgroup", d.as_str()]);
    }
    let agent = Agent::start(&args);
    let mut children: Vec<std::process::Child> = cgroups
        .iter()
        .zip(&groups)
        .map(|(cg, (_, script))| cg.spawn_bash(script))
        .collect();
    let _cleanup = guard_tests::Defer(|| {
        for cg in &cgroups {
            cg.kill_all();
        }
    });
    std::thread::sleep(Duration::from_secs(230));
    // The ramp reached its plateau.
    let ramp: u64 = std::fs::read_to_string(cgroups[2].pids_dir().join("pids.current"))
        .expect("pids.current")
        .trim()
        .parse()
        .expect("a count");
    assert!(ramp >= 200, "the ramp has {ramp} tasks");
    let stopped = agent.stop();
    for c in &mut children {
        let _ = c.kill();
        let _ = c.wait();
    }
    let alerts: Vec<&Value> = stopped
        .of_kind("alert")
        .filter(|r| r["detector"] == "leak")
        .collect();
    let agent_start = num(&stopped.records[0], "boot_ns");
    for (i, per_sec) in [(0usize, 1.0f64), (1, 2.0)] {
        let alert = alerts
            .iter()
            .find(|a| a["cgroup"] == dirs[i].as_str())
            .unwrap_or_else(|| panic!("{} was not named: {alerts:#?}", groups[i].0));
        let after = (num(alert, "boot_ns") - agent_start) as f64 / 1e9;
        assert!(
            after <= 180.0,
            "{} named after {after:.0} s: {alert}",
            groups[i].0
        );
        let rate = alert["per_min"].as_f64().expect("per_min") / 60.0;
        assert!(
            (per_sec * 0.75..=per_sec * 1.25).contains(&rate),
            "{per_sec}/s measured as {rate:.2}/s: {alert}"
        );
        assert_eq!(
            num(&alert["offender"], "pid"),
            u64::from(children[i].id()),
            "the spawning shell: {alert}"
        );
        assert!(alert["host_tasks_limit"].as_u64() > Some(0), "{alert}");
        assert!(alert["host_tasks_eta_secs"].as_f64() > Some(0.0), "{alert}");
        assert!(alert["memory_per_task_bytes"].as_u64() > Some(0), "{alert}");
        assert!(alert["memory_eta_secs"].as_f64() > Some(0.0), "{alert}");
        assert!(alert["runs_out_first"].is_string(), "{alert}");
        assert_eq!(alert["action"], "log", "{alert}");
    }
    for i in [2, 3] {
        let wrong: Vec<&&Value> = alerts
            .iter()
            .filter(|a| a["cgroup"] == dirs[i].as_str())
            .collect();
        assert!(wrong.is_empty(), "{} was named: {wrong:#?}", groups[i].0);
    }
    // The recycled pool did recycle.
    let recycled = stopped
        .of_kind("exit")
        .filter(|r| r["cgroup"] == dirs[3].as_str())
        .count();
    assert!(recycled >= 100, "only {recycled} recycled workers exited");
    assert!(cgroups.iter().all(|c| c.pids_refused() == 0));
}
