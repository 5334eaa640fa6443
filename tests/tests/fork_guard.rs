//! The fork guard on this machine's kernel: real bash fork bombs, a slow
//! leak and a legitimate burst, each in a pids cgroup of the test's own
//! (pids.max and a memory limit), with the agent scoped to it.

use std::{
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use guard_tests::{Agent, Defer, TestCgroup, num};
use serde_json::Value;

const BOMB: &str = ":(){ :|:& };:";

/// Runs `bash -c script` in the cgroup until its first process ends (it may
/// be killed as the offender before it returns).
fn start_bomb(cg: &TestCgroup, script: &str) {
    let _ = cg.spawn_bash(script).wait();
}

/// A process that forks every 100 ms, as a service in the same cgroup would
/// (a fork refused by pids.max is retried at the next tick, not fatal).
fn bystander(cg: &TestCgroup) -> Child {
    cg.spawn_ready(&["service", "100"])
}

#[test]
fn a_bash_fork_bomb_is_killed_and_the_bystander_lives() {
    let cg = TestCgroup::new("bomb", 1000, 512 << 20);
    let scope = cg.pids_dir().to_str().expect("utf8").to_owned();
    let mut agent = Agent::start(&[
        "--cgroup",
        &scope,
        "--fork-action",
        "kill",
        "--events",
        "fork",
    ]);
    let mut bystander = bystander(&cg);
    let bystander_pid = u64::from(bystander.id());

    start_bomb(&cg, BOMB);
    let alert = agent.wait_for(Duration::from_secs(20), "an alert", |r| {
        r["kind"] == "alert"
    });
    assert_eq!(alert["rule"], "explosion", "{alert}");
    assert_eq!(alert["offender"]["comm"], "bash", "{alert}");
    assert_eq!(alert["offender"]["exe"], "/bin/bash", "{alert}");
    // The arguments, as the exec probe copied them.
    assert_eq!(
        alert["offender"]["cmdline"],
        serde_json::json!(["/bin/bash", "-c", BOMB]),
        "{alert}"
    );
    // Containment may take a follow-up action (a member born just as a
    // pass ended): wait for the one that reports the subtree contained.
    let action = agent.wait_for(Duration::from_secs(20), "a containing action", |r| {
        r["kind"] == "action" && r["outcome"]["contained"] == true
    });
    assert_eq!(action["action"], "kill", "{action}");
    assert_eq!(action["outcome"]["running"], 0, "{action}");

    // Every bomb process is gone (zombies wait for PID 1 a moment).
    cg.wait_until_gone("bash", Duration::from_secs(10));
    // pids.max never refused a fork: guard stopped the bomb before the
    // limit did (the median and worst over many rounds are figures of
    // `cargo xtask bench`).
    assert_eq!(cg.pids_refused(), 0, "the bomb reached pids.max");

    // The bystander lives, and can still fork.
    assert!(
        bystander.try_wait().expect("try_wait").is_none(),
        "the bystander was killed"
    );
    agent.wait_for(
        Duration::from_secs(5),
        "a fork by the bystander after the action",
        |r| r["kind"] == "fork" && r["parent_tgid"].as_u64() == Some(bystander_pid),
    );
    let stopped = agent.stop();
    // A killed bomb is not a crash loop.
    assert_eq!(
        stopped
            .of_kind("alert")
            .filter(|a| a["detector"] == "crashloop")
            .count(),
        0,
        "{:?}",
        stopped.of_kind("alert").collect::<Vec<_>>()
    );
    for action in stopped.of_kind("action") {
        assert_ne!(
            action["offender"]["pid"].as_u64(),
            Some(bystander_pid),
            "{action}"
        );
    }
    // One bomb, one incident: one fork alert; every action (follow-ups
    // included) and one `resolved` carry its id.
    let fork_alerts: Vec<_> = stopped
        .of_kind("alert")
        .filter(|a| a["detector"] == "fork")
        .collect();
    assert_eq!(fork_alerts.len(), 1, "{fork_alerts:#?}");
    let incident = &fork_alerts[0]["incident"];
    assert!(incident.is_string(), "{}", fork_alerts[0]);
    for action in stopped.of_kind("action") {
        assert_eq!(&action["incident"], incident, "{action}");
    }
    let resolved: Vec<_> = stopped
        .of_kind("resolved")
        .filter(|r| &r["incident"] == incident)
        .collect();
    assert_eq!(resolved.len(), 1, "{resolved:#?}");
    assert_eq!(resolved[0]["ended"], "contained", "{}", resolved[0]);
}

/// Starts the agent scoped to `scope` with --fork-action kill, freezes it
/// whole (SIGSTOP), runs a bomb in `cg` beside a bystander, and checks that
/// the fork probe alone empties it without pids.max refusing a fork; then
/// thaws the agent and checks what it reports.
fn bomb_under_a_frozen_agent(cg: &TestCgroup, scope: &str) {
    let mut agent = Agent::start(&[
        "--cgroup",
        scope,
        "--fork-action",
        "kill",
        "--events",
        "fork",
    ]);
    let mut bystander = bystander(cg);
    // What happens to the bomb now is the fork probe's doing alone. (A
    // failed assertion kills the agent anyway.)
    agent.signal(libc::SIGSTOP);
    let thaw = Defer(|| agent.signal(libc::SIGCONT));
    start_bomb(cg, BOMB);
    cg.wait_until_gone("bash", Duration::from_secs(10));
    assert_eq!(cg.pids_refused(), 0, "the bomb reached pids.max");
    assert!(
        bystander.try_wait().expect("try_wait").is_none(),
        "the bystander was killed"
    );
    drop(thaw);

    // Thawed, the agent reports what the probe did.
    let alert = agent.wait_for(Duration::from_secs(20), "the probe's alert", |r| {
        r["kind"] == "alert" && r["detector"] == "fork"
    });
    assert_eq!(alert["rule"], "explosion", "{alert}");
    assert_eq!(alert["condemned_by_kernel"], true, "{alert}");
    assert_eq!(alert["offender"]["comm"], "bash", "{alert}");
    assert!(num(&alert, "births") >= 100, "{alert}");
    assert!(num(&alert, "growth") >= 32, "{alert}");
    let action = agent.wait_for(Duration::from_secs(20), "the action", |r| {
        r["kind"] == "action"
    });
    assert_eq!(action["outcome"]["condemned_by_kernel"], true, "{action}");
    assert_eq!(action["outcome"]["contained"], true, "{action}");
    let bystander_pid = u64::from(bystander.id());
    assert_ne!(action["offender"]["pid"].as_u64(), Some(bystander_pid));
    drop(agent.stop());
}

#[test]
fn the_fork_probe_contains_a_bomb_while_the_agent_is_frozen() {
    let cg = TestCgroup::new("bomb-frozen", 1000, 512 << 20);
    let scope = cg.pids_dir().to_str().expect("utf8").to_owned();
    bomb_under_a_frozen_agent(&cg, &scope);
}

/// The same with the scope given as a cgroup v2 directory, so that the
/// fork probe reads the task's v2 cgroup (`css_set.dfl_cgrp`) rather than
/// a v1 controller's. (pids.max still comes from the v1 pids cgroup the
/// bomb is also in: this host's v2 hierarchy has no controllers.)
#[test]
fn the_fork_probe_reads_a_cgroup_v2_scope() {
    let (cg, v2) = TestCgroup::new("bomb-v2", 1000, 512 << 20).with_v2_dir();
    let v2 = v2.unwrap_or_else(|| cg.pids_dir().to_path_buf());
    bomb_under_a_frozen_agent(&cg, v2.to_str().expect("utf8"));
}

#[test]
fn stop_freezes_every_bomb_process_and_spares_the_bystander() {
    let cg = TestCgroup::new("bomb-stop", 1000, 512 << 20);
    let scope = cg.pids_dir().to_str().expect("utf8").to_owned();
    let mut agent = Agent::start(&[
        "--cgroup",
        &scope,
        "--fork-action",
        "stop",
        "--events",
        "fork",
    ]);
    let mut bystander = bystander(&cg);
    let bystander_pid = bystander.id();
    // Not waited for: the bomb's first process may be stopped before it
    // returns. It is killed and reaped with the rest at the end.
    let mut root = cg.spawn_bash(BOMB);
    let action = agent.wait_for(Duration::from_secs(20), "a containing action", |r| {
        r["kind"] == "action" && r["outcome"]["contained"] == true
    });
    assert_eq!(action["action"], "stop", "{action}");
    assert_eq!(action["signals"], "SIGSTOP", "{action}");
    // Nothing of the bomb runs: each process is stopped, or exited before
    // it was reached. The stopped ones stay (the cgroup is emptied when the
    // test ends).
    let bash: Vec<_> = cg
        .members()
        .into_iter()
        .filter(|m| m.1 == "bash" && m.2 != 'Z')
        .collect();
    let running: Vec<_> = bash.iter().filter(|m| m.2 != 'T').collect();
    assert!(
        running.is_empty(),
        "bomb processes still running: {running:?}"
    );
    assert!(!bash.is_empty(), "no stopped bomb process left to inspect");
    assert_eq!(cg.pids_refused(), 0, "the bomb reached pids.max");
    assert!(
        bystander.try_wait().expect("try_wait").is_none(),
        "the bystander died"
    );
    let state = cg
        .members()
        .into_iter()
        .find(|m| m.0 == bystander_pid)
        .map(|m| m.2);
    assert!(
        matches!(state, Some('S' | 'R')),
        "the bystander was stopped: {state:?}"
    );
    // It settles: no more action rounds on a subtree already stopped, and
    // back to normal scheduling (a stop used to be followed up every ~13 ms
    // for ever, at SCHED_FIFO).
    std::thread::sleep(Duration::from_secs(2));
    let fifo: Vec<_> = agent
        .thread_policies()
        .into_iter()
        .filter(|(name, policy)| *policy == libc::SCHED_FIFO as u32 && name != "guard-act")
        .collect();
    let stopped = agent.stop();
    assert!(fifo.is_empty(), "still SCHED_FIFO after the stop: {fifo:?}");
    let settled_at = num(&action, "boot_ns") + 1_000_000_000;
    let late: Vec<&Value> = stopped
        .of_kind("action")
        .filter(|r| num(r, "boot_ns") > settled_at)
        .collect();
    assert!(
        late.is_empty(),
        "{} action records more than 1 s after the containment, the first: {}",
        late.len(),
        late[0]
    );
    cg.kill_all();
    let _ = root.wait();
}

#[test]
fn protected_processes_in_a_bomb_are_never_signalled() {
    let cg = TestCgroup::new("bomb-protect", 1000, 512 << 20);
    let scope = cg.pids_dir().to_str().expect("utf8").to_owned();
    let mut agent = Agent::start(&[
        "--cgroup",
        &scope,
        "--fork-action",
        "kill",
        "--protect",
        "sleep",
        "--events",
        "fork",
    ]);
    // The bomb's own root starts a long sleep first: a member of the
    // offending subtree, protected by its comm.
    start_bomb(&cg, &format!("sleep 300 & {BOMB}"));
    agent.wait_for(Duration::from_secs(20), "a containing action", |r| {
        r["kind"] == "action" && r["outcome"]["contained"] == true
    });
    cg.wait_until_gone("bash", Duration::from_secs(10));
    let sleepers: Vec<_> = cg
        .members()
        .into_iter()
        .filter(|m| m.1 == "sleep")
        .collect();
    assert_eq!(sleepers.len(), 1, "{sleepers:?}");
    assert!(
        matches!(sleepers[0].2, 'S' | 'R'),
        "the protected sleep was signalled: {sleepers:?}"
    );
    drop(agent.stop());
}

#[test]
fn a_slow_leak_is_projected_to_pids_max_before_it_is_hit() {
    const LIMIT: u64 = 60;
    let cg = TestCgroup::new("leak", LIMIT as u32, 256 << 20);
    let scope = cg.pids_dir().to_str().expect("utf8").to_owned();
    let mut agent = Agent::start(&["--cgroup", &scope, "--events", "exit"]);
    // Five long-lived children a second, no burst.
    let mut leaker = cg
        .command("/bin/bash")
        .args([
            "-c",
            "while :; do for i in 1 2 3 4 5; do sleep 600 & done; sleep 1; done",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the leak");
    let alert = agent.wait_for(Duration::from_secs(20), "a pids trend alert", |r| {
        r["kind"] == "alert"
    });
    let hits_at_alert = cg.pids_refused();
    let _ = leaker.kill();
    let _ = leaker.wait();
    assert_eq!(alert["rule"], "pids_limit_trend", "{alert}");
    assert_eq!(alert["cgroup"], scope.as_str(), "{alert}");
    assert_eq!(num(&alert, "limit"), LIMIT, "{alert}");
    assert!(num(&alert, "current") < LIMIT, "{alert}");
    let eta = alert["eta_secs"].as_f64().expect("eta_secs");
    assert!(eta > 0.0 && eta <= 30.0, "{alert}");
    let rate = alert["per_sec"].as_f64().expect("per_sec");
    assert!(
        (3.0..=7.0).contains(&rate),
        "fitted {rate}/s for a 5/s leak: {alert}"
    );
    assert_eq!(alert["offender"]["comm"], "bash", "{alert}");
    assert_eq!(hits_at_alert, 0, "the alert came after pids.max was hit");
    assert_eq!(alert["action"], "log");
    drop(agent.stop());
}

#[test]
fn a_legitimate_burst_raises_no_alert() {
    let cg = TestCgroup::new("burst", 1000, 256 << 20);
    let scope = cg.pids_dir().to_str().expect("utf8").to_owned();
    let agent = Agent::start(&[
        "--cgroup",
        &scope,
        "--fork-action",
        "kill",
        "--events",
        "exit",
    ]);
    // 200 short-lived processes from one parent within a second, then quiet.
    let started = Instant::now();
    let out = cg
        .workload(&["spawn", "200", "/bin/true"])
        .output()
        .expect("burst");
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "the burst's parent was disturbed: {}",
        out.status
    );
    assert!(took < Duration::from_secs(2), "the burst took {took:?}");
    std::thread::sleep(Duration::from_secs(2));
    let stopped = agent.stop();
    let exits = stopped
        .of_kind("exit")
        .filter(|r| r["comm"] == "true" && r["exit_code"] == 0)
        .count();
    assert_eq!(exits, 200, "every process of the burst ran to its end");
    let flagged: Vec<&Value> = stopped
        .records
        .iter()
        .filter(|r| r["kind"] == "alert" || r["kind"] == "action")
        .collect();
    assert!(flagged.is_empty(), "{flagged:?}");
}

/// Wide parallel builds with `--fork-action kill`: `xargs -P 64` running
/// 3000 short tasks, `make -j64` of 600 targets, each recipe a shell
/// running two commands, and a Python pool of 64 forked workers. Both start at full width at once and come nowhere
/// near pids.max; the explosion rule used to kill xargs at 100 births.
/// Their children exec tools: they are no bomb, and nothing is signalled
/// or alerted.
#[test]
fn wide_parallel_builds_are_not_signalled() {
    let cg = TestCgroup::new("wide-build", 2000, 1 << 30);
    let scope = cg.pids_dir().to_str().expect("utf8").to_owned();
    let dir = std::env::temp_dir().join(format!("guard-test-make-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let _cleanup = Defer(|| {
        let _ = std::fs::remove_dir_all(&dir);
    });
    let mut makefile = String::from("all:");
    for i in 0..600 {
        makefile.push_str(&format!(" t{i}"));
    }
    makefile.push('\n');
    for i in 0..600 {
        makefile.push_str(&format!(
            "t{i}:\n\t@sleep 0.0$$(( {i} % 5 )); echo {i} > /dev/null\n"
        ));
    }
    std::fs::write(dir.join("Makefile"), makefile).expect("Makefile");

    let agent = Agent::start(&[
        "--cgroup",
        &scope,
        "--fork-action",
        "kill",
        "--events",
        "exit",
    ]);
    let xargs = cg
        .command("/bin/sh")
        .args([
            "-c",
            "seq 1 3000 | xargs -P 64 -n 1 sh -c 'sleep 0.0$(( $0 % 3 )); true'",
        ])
        .status()
        .expect("xargs");
    let make = cg
        .command("make")
        .args(["-s", "-j64", "-C"])
        .arg(&dir)
        .status()
        .expect("make");
    // A pool of 64 forked workers, started through whatever `python3` is
    // (here a pyenv shim: a bash script whose nested subshells are 4 and
    // more deep, in the same window as the pool's growth).
    let pool = cg
        .command("/bin/sh")
        .args([
            "-c",
            "python3 -c 'import multiprocessing as m\nwith m.Pool(64) as p: p.map(abs, range(-9999, 9999))'",
        ])
        .status()
        .expect("python3");
    std::thread::sleep(Duration::from_secs(1));
    let stopped = agent.stop();
    assert!(xargs.success(), "xargs -P 64 was disturbed: {xargs}");
    assert!(make.success(), "make -j64 was disturbed: {make}");
    assert!(
        pool.success(),
        "multiprocessing.Pool(64) was disturbed: {pool}"
    );
    let sleeps = stopped
        .of_kind("exit")
        .filter(|r| r["comm"] == "sleep" && r["exit_code"] == 0)
        .count();
    assert!(sleeps >= 3600, "only {sleeps} tasks ran: no test");
    let flagged: Vec<&Value> = stopped
        .records
        .iter()
        .filter(|r| matches!(r["kind"].as_str(), Some("alert" | "action" | "condemned")))
        .collect();
    assert!(flagged.is_empty(), "{flagged:?}");
    assert_eq!(cg.pids_refused(), 0);
}

/// `--ignore fork:cgroup=REGEX` holds in the kernel too: a bomb in an
/// ignored cgroup is neither condemned by the fork probe nor signalled,
/// and runs into its pids.max (the test cgroup's drop ends it).
#[test]
fn an_ignored_cgroup_is_left_alone_by_the_probe_too() {
    let cg = TestCgroup::new("ignored-bomb", 200, 256 << 20);
    let scope = cg.pids_dir().to_str().expect("utf8").to_owned();
    let leaf = cg
        .pids_dir()
        .file_name()
        .expect("leaf")
        .to_string_lossy()
        .into_owned();
    let rule = format!("fork:cgroup=/{leaf}$");
    let agent = Agent::start(&[
        "--cgroup",
        &scope,
        "--fork-action",
        "kill",
        "--ignore",
        &rule,
    ]);
    let mut root = cg.spawn_bash(BOMB);
    let deadline = Instant::now() + Duration::from_secs(10);
    while cg.pids_refused() == 0 {
        assert!(
            Instant::now() < deadline,
            "the ignored bomb never reached pids.max"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    let stopped = agent.stop();
    let flagged: Vec<&Value> = stopped
        .records
        .iter()
        .filter(|r| matches!(r["kind"].as_str(), Some("alert" | "action" | "condemned")))
        .collect();
    assert!(flagged.is_empty(), "{flagged:?}");
    let killed = stopped
        .of_kind("exit")
        .filter(|r| r["signal"] == "SIGKILL")
        .count();
    assert_eq!(killed, 0, "bomb processes were killed");
    cg.kill_all();
    let _ = root.wait();
}

/// Threads are tasks pids.max counts: a thread bomb (every thread starts
/// two more) is contained before the limit refuses one, by killing its
/// process; the bystander beside it lives.
#[test]
fn a_thread_bomb_is_killed_before_pids_max() {
    let cg = TestCgroup::new("thread-bomb", 1000, 1 << 30);
    let scope = cg.pids_dir().to_str().expect("utf8").to_owned();
    let mut agent = Agent::start(&[
        "--cgroup",
        &scope,
        "--fork-action",
        "kill",
        "--events",
        "exit",
    ]);
    let mut bystander = bystander(&cg);
    let mut bomb = cg.spawn_ready(&["threadbomb"]);
    let bomb_pid = u64::from(bomb.id());
    let action = agent.wait_for(Duration::from_secs(20), "the thread bomb's kill", |r| {
        r["kind"] == "action" && r["detector"] == "fork"
    });
    let status = bomb.wait().expect("wait for the bomb");
    std::thread::sleep(Duration::from_millis(300));
    let stopped = agent.stop();
    assert_eq!(cg.pids_refused(), 0, "the thread bomb reached pids.max");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL),
        "{status}"
    );
    assert!(
        bystander.try_wait().expect("try_wait").is_none(),
        "the bystander died"
    );
    let alert = stopped
        .of_kind("alert")
        .find(|r| r["detector"] == "fork")
        .unwrap_or_else(|| panic!("no fork alert: {action}"));
    assert!(
        2 * num(alert, "deep_births") >= num(alert, "births"),
        "half the births are threads that started threads: {alert}"
    );
    let members: Vec<u64> = stopped
        .of_kind("exit")
        .filter(|r| r["signal"] == "SIGKILL" && r["group_dead"] == true)
        .map(|r| num(r, "tgid"))
        .collect();
    assert_eq!(
        members,
        vec![bomb_pid],
        "only the bomb's process was killed"
    );
    let _ = bystander.kill();
    let _ = bystander.wait();
}

/// A spawn storm that does not copy itself (`while :; do sleep 1000 &
/// done`: each child execs sleep): no explosion, but it would fill
/// pids.max within a second. The rush rule kills the loop and what it
/// started before the limit refuses a fork; the bystander lives.
#[test]
fn a_spawn_storm_is_stopped_before_pids_max() {
    let cg = TestCgroup::new("storm", 1000, 1 << 30);
    let scope = cg.pids_dir().to_str().expect("utf8").to_owned();
    let mut agent = Agent::start(&[
        "--cgroup",
        &scope,
        "--fork-action",
        "kill",
        "--events",
        "exit",
    ]);
    let mut bystander = bystander(&cg);
    let mut storm = cg.spawn_bash("while :; do sleep 1000 & done");
    let storm_pid = u64::from(storm.id());
    let alert = agent.wait_for(Duration::from_secs(20), "the rush alert", |r| {
        r["kind"] == "alert" && r["detector"] == "fork"
    });
    cg.wait_until_gone("sleep", Duration::from_secs(10));
    let _ = storm.wait();
    drop(agent.stop());
    assert_eq!(alert["rule"], "pids_limit_rush", "{alert}");
    assert_eq!(num(&alert["offender"], "pid"), storm_pid, "{alert}");
    assert!(num(&alert, "current") < 1000, "{alert}");
    assert_eq!(cg.pids_refused(), 0, "the storm reached pids.max");
    assert!(
        bystander.try_wait().expect("try_wait").is_none(),
        "the bystander died"
    );
}
