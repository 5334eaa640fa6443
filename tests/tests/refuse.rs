//! Refusal's fallback on this machine: with the LSM program not attached
//! (`--no-lsm`, or a kernel that does not take LSM programs), `refuse`
//! only alerts, a ladder starts at its next rung, and guard says so in
//! `guard check`, the start record and its log. Refusal itself (a bomb
//! held flat, the ladder, SIGUSR2, threads, kill refusing first) is checked
//! in the VM guests (`guard-vmcheck`: Debian's 6.1 and 6.12), because this
//! machine's kernel lists `bpf` among its LSMs but refuses LSM programs.
//! Each workload runs in a pids cgroup of its own.

use std::{process::Child, time::Duration};

use guard_tests::{Agent, TestCgroup, guard_bin};
use serde_json::Value;

fn bystander(cg: &TestCgroup) -> Child {
    cg.spawn_ready(&["service", "100"])
}

fn scope(cg: &TestCgroup) -> String {
    cg.pids_dir().to_str().expect("utf8").to_owned()
}

/// The agent on `cg` with these flags and fork events; checks the start
/// record says whether refusal is in force.
fn agent(cg: &TestCgroup, flags: &[&str], refusal: bool) -> Agent {
    let scope = scope(cg);
    let mut args = vec!["--cgroup", scope.as_str(), "--events", "fork"];
    args.extend_from_slice(flags);
    let agent = Agent::start(&args);
    let start = &agent.start;
    assert_eq!(start["refusal"]["available"], refusal, "{start}");
    agent
}

fn alive(child: &mut Child) -> bool {
    child.try_wait().expect("try_wait").is_none()
}

#[test]
fn guard_check_and_the_start_record_agree_on_refusal_here() {
    let out = std::process::Command::new(guard_bin())
        .arg("check")
        .output()
        .expect("guard check");
    let text = String::from_utf8_lossy(&out.stdout);
    let row = text
        .lines()
        .find(|l| l.starts_with("refusal (BPF LSM)"))
        .unwrap_or_else(|| panic!("no refusal row:\n{text}"));
    let cg = TestCgroup::new("refuse-check", 64, 64 << 20);
    let agent = Agent::start(&["--cgroup", &scope(&cg)]);
    let refusal = agent.start["refusal"].clone();
    agent.stop();
    let available = refusal["available"] == true;
    assert_eq!(row.contains(" ok "), available, "{row} vs {refusal}");
    if !available {
        let why = refusal["why_not"].as_str().expect("a reason");
        assert!(row.contains(why), "the same reason: {row} vs {why}");
    }
}

#[test]
fn without_refusal_a_plain_refuse_only_alerts() {
    let cg = TestCgroup::new("refuse-log", 300, 256 << 20);
    let mut agent = agent(&cg, &["--fork-action", "refuse", "--no-lsm"], false);
    assert_eq!(agent.start["fork_action"], "log", "{}", agent.start);
    let _ = cg.spawn_bash(":(){ :|:& };:").wait();
    let alert = agent.wait_for(Duration::from_secs(20), "the alert", |r| {
        r["kind"] == "alert" && r["detector"] == "fork"
    });
    std::thread::sleep(Duration::from_millis(300));
    let left = cg.live_named("bash");
    cg.kill_all();
    let stopped = agent.stop();
    assert_eq!(alert["action"], "log", "{alert}");
    assert!(left > 10, "the bomb was signalled: {left} left");
    assert_eq!(stopped.of_kind("action").count(), 0, "an action was taken");
    assert!(
        stopped.stderr.contains("--fork-action refuse acts as log"),
        "says so: {}",
        stopped.stderr
    );
}

#[test]
fn without_the_lsm_program_a_ladder_starts_at_its_next_rung() {
    let cg = TestCgroup::new("refuse-fallback", 1000, 512 << 20);
    let mut agent = agent(
        &cg,
        &["--fork-action", "refuse-then-kill", "--no-lsm"],
        false,
    );
    let mut bystander = bystander(&cg);
    let _ = cg.spawn_bash(":(){ :|:& };:").wait();
    let action = agent.wait_for(Duration::from_secs(20), "the kill", |r| {
        r["kind"] == "action" && r["outcome"]["contained"] == true
    });
    cg.wait_until_gone("bash", Duration::from_secs(10));
    assert!(alive(&mut bystander), "the bystander died");
    let _ = bystander.kill();
    let _ = bystander.wait();
    let start: Value = agent.start.clone();
    let stopped = agent.stop();
    assert_eq!(start["fork_action"], "kill", "{start}");
    assert!(
        start["refusal"]["why_not"]
            .as_str()
            .is_some_and(|w| w.contains("--no-lsm")),
        "{start}"
    );
    assert!(
        !start["probes"]
            .as_array()
            .expect("probes")
            .iter()
            .any(|p| p == "lsm/task_alloc"),
        "{start}"
    );
    assert_eq!(action["action"], "kill", "{action}");
    assert!(action["outcome"]["refused_forks"].is_null(), "{action}");
    assert_eq!(stopped.of_kind("refusal").count(), 0);
    assert!(
        stopped.stderr.contains("refuse-then-kill acts as kill"),
        "says so: {}",
        stopped.stderr
    );
}
