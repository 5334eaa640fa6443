//! The tracer on this machine's kernel: real workloads in a cgroup of the
//! test's own, exact events, pids, exit codes and cgroup paths.

use std::{collections::BTreeSet, time::Duration};

use guard_tests::{Agent, TestCgroup, num, run, workload_bin};
use serde_json::Value;

fn parse(stdout: &str) -> Value {
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("workload printed {stdout:?}: {e}"))
}

fn dir(cg: &std::path::Path) -> String {
    cg.canonicalize()
        .expect("canonical cgroup dir")
        .to_string_lossy()
        .into_owned()
}

#[test]
fn fork_exec_exit_are_seen_exactly() {
    let cg = TestCgroup::new("trace", 64, 256 << 20);
    let agent = Agent::start(&["--cgroup", cg.pids_dir().to_str().expect("utf8")]);
    let (status, out) = run(&mut cg.workload(&["spawn", "5", "/bin/sh", "-c", "exit 3"]));
    assert!(status.success(), "workload failed: {status}");
    let stopped = agent.stop();
    assert!(
        stopped.status.success(),
        "guard exited with {}; stderr:\n{}",
        stopped.status,
        stopped.stderr
    );

    let wl = parse(&out);
    let wpid = num(&wl, "pid");
    let children: BTreeSet<u64> = wl["children"]
        .as_array()
        .expect("children")
        .iter()
        .map(|c| num(c, "pid"))
        .collect();
    assert_eq!(children.len(), 5);
    let cgroup = dir(cg.pids_dir());

    // Exactly five process forks by the workload, for exactly its children.
    let forks: Vec<&Value> = stopped
        .of_kind("fork")
        .filter(|r| num(r, "parent_tgid") == wpid)
        .collect();
    let forked: BTreeSet<u64> = forks.iter().map(|r| num(r, "pid")).collect();
    assert_eq!(forked, children, "fork records: {forks:?}");
    for f in &forks {
        assert_eq!(
            (f["thread"].as_bool(), f["tgid"].as_u64()),
            (Some(false), f["pid"].as_u64()),
            "{f}"
        );
        assert_eq!(f["ppid"].as_u64(), Some(wpid), "{f}");
        assert_eq!(f["cgroup"], cgroup.as_str(), "{f}");
        assert_eq!(f["parent_comm"], "guard-workload", "{f}");
    }

    // The workload's own exec, then one exec of /bin/sh per child.
    let execs: Vec<&Value> = stopped.of_kind("exec").collect();
    let own = execs
        .iter()
        .find(|r| num(r, "pid") == wpid)
        .expect("the workload's exec");
    assert_eq!(own["filename"], workload_bin().to_string_lossy().as_ref());
    let sh: BTreeSet<u64> = execs
        .iter()
        .filter(|r| r["filename"] == "/bin/sh" && r["comm"] == "sh")
        .map(|r| num(r, "pid"))
        .collect();
    assert_eq!(sh, children, "exec records: {execs:?}");

    // Each child exits with code 3, the workload with 0.
    let exits: Vec<&Value> = stopped.of_kind("exit").collect();
    for child in &children {
        let exit = exits
            .iter()
            .find(|r| num(r, "pid") == *child)
            .unwrap_or_else(|| panic!("no exit for {child}"));
        assert_eq!(
            (exit["exit_code"].as_i64(), exit["signal"].is_null()),
            (Some(3), true),
            "{exit}"
        );
        assert_eq!(
            (exit["comm"].as_str(), exit["ppid"].as_u64()),
            (Some("sh"), Some(wpid)),
            "{exit}"
        );
        assert_eq!(exit["cgroup"], cgroup.as_str(), "{exit}");
        assert_eq!(exit["group_dead"], true);
    }
    let own_exit = exits
        .iter()
        .find(|r| num(r, "pid") == wpid)
        .expect("the workload's exit");
    assert_eq!(own_exit["exit_code"].as_i64(), Some(0));
    assert_eq!(
        stopped.of_kind("exit").count(),
        6,
        "only this cgroup's processes are shown"
    );
}

#[test]
fn exit_codes_and_signals_come_from_the_task() {
    let cg = TestCgroup::new("signals", 16, 128 << 20);
    let agent = Agent::start(&[
        "--cgroup",
        cg.pids_dir().to_str().expect("utf8"),
        "--events",
        "exit",
    ]);

    let (status, _) = run(cg
        .workload(&["exit", "42"])
        .stdout(std::process::Stdio::piped()));
    assert_eq!(status.code(), Some(42));
    let mut victims = Vec::new();
    for signal in [libc::SIGTERM, libc::SIGKILL, libc::SIGUSR1] {
        let mut child = cg.spawn_ready(&["sleep", "30"]);
        // SAFETY: signals our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        child.wait().expect("wait");
        victims.push((child.id() as u64, signal));
    }
    let stopped = agent.stop();
    let exits: Vec<&Value> = stopped.of_kind("exit").collect();
    assert!(
        exits
            .iter()
            .any(|r| r["exit_code"] == 42 && r["comm"] == "guard-workload"),
        "{exits:?}"
    );
    for (pid, signal) in victims {
        let name = match signal {
            libc::SIGTERM => "SIGTERM",
            libc::SIGKILL => "SIGKILL",
            _ => "SIGUSR1",
        };
        let exit = exits
            .iter()
            .find(|r| num(r, "pid") == pid)
            .unwrap_or_else(|| panic!("no exit for {pid}"));
        assert_eq!(
            (exit["signal"].as_str(), exit["exit_code"].is_null()),
            (Some(name), true),
            "{exit}"
        );
        // None of these signals dumps core.
        assert_eq!(exit["core_dumped"], false, "{exit}");
    }
    assert_eq!(
        stopped.of_kind("fork").count(),
        0,
        "--events exit shows exits only"
    );
}

#[test]
fn threads_are_told_apart_from_processes() {
    let cg = TestCgroup::new("threads", 32, 128 << 20);
    let scope = cg.pids_dir().to_str().expect("utf8").to_owned();

    let agent = Agent::start(&["--cgroup", &scope, "--threads"]);
    let (_, out) = run(&mut cg.workload(&["threads", "4"]));
    let stopped = agent.stop();
    let wl = parse(&out);
    let wpid = num(&wl, "pid");
    let tids: BTreeSet<u64> = wl["tids"]
        .as_array()
        .expect("tids")
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    assert_eq!(tids.len(), 4);
    let thread_forks: BTreeSet<u64> = stopped
        .of_kind("fork")
        .filter(|r| r["thread"] == true && num(r, "tgid") == wpid)
        .map(|r| num(r, "pid"))
        .collect();
    assert_eq!(thread_forks, tids);
    let thread_exits: BTreeSet<u64> = stopped
        .of_kind("exit")
        .filter(|r| r["group_dead"] == false && num(r, "tgid") == wpid)
        .map(|r| num(r, "pid"))
        .collect();
    assert_eq!(thread_exits, tids);
    assert_eq!(
        stopped
            .of_kind("fork")
            .filter(|r| r["thread"] == false)
            .count(),
        0,
        "no new process"
    );

    // Without --threads, the same workload shows no thread-level record.
    let agent = Agent::start(&["--cgroup", &scope]);
    run(&mut cg.workload(&["threads", "4"]));
    let stopped = agent.stop();
    assert_eq!(stopped.of_kind("fork").count(), 0);
    assert_eq!(
        stopped.of_kind("exit").count(),
        1,
        "only the process's own exit"
    );
    assert_eq!(
        stopped.summary()["seen"]["fork"].as_u64().map(|n| n >= 4),
        Some(true)
    );
}

#[test]
fn scope_shows_only_its_cgroup_and_paths_follow_moves() {
    let inside = TestCgroup::new("scope-in", 16, 128 << 20);
    let outside = TestCgroup::new("scope-out", 16, 128 << 20);
    let scope = dir(inside.pids_dir());
    let mut agent = Agent::start(&["--cgroup", &scope]);
    assert_eq!(agent.start["scope"], serde_json::json!([scope]));

    run(&mut outside.workload(&["exit", "0"]));
    let mut mover = outside.spawn_ready(&["sleep", "30"]);
    let mover_pid = mover.id() as u64;
    // Move it into the scope by hand, as an operator would.
    std::fs::write(
        inside.pids_dir().join("cgroup.procs"),
        mover_pid.to_string(),
    )
    .expect("move");
    let attach = agent.wait_for(Duration::from_secs(10), "cgroup_attach of the mover", |r| {
        r["kind"] == "cgroup_attach" && r["pid"].as_u64() == Some(mover_pid)
    });
    assert_eq!(attach["cgroup"], scope.as_str(), "{attach}");
    // SAFETY: signals our own child.
    unsafe { libc::kill(mover_pid as i32, libc::SIGKILL) };
    mover.wait().expect("wait");
    let stopped = agent.stop();

    let events = [
        "fork",
        "exec",
        "exit",
        "cgroup_attach",
        "oom_kill",
        "hung_task",
    ];
    for r in stopped
        .records
        .iter()
        .filter(|r| events.iter().any(|k| r["kind"] == *k))
    {
        let cgroup = r["cgroup"]
            .as_str()
            .unwrap_or_else(|| panic!("no cgroup in {r}"));
        assert!(
            cgroup == scope || cgroup.starts_with(&format!("{scope}/")),
            "out of scope: {r}"
        );
    }
    let exit = stopped
        .of_kind("exit")
        .find(|r| num(r, "pid") == mover_pid)
        .expect("mover's exit is in scope");
    assert_eq!(exit["signal"], "SIGKILL");
    // The outside workload's records were filtered out: only the mover shows.
    assert!(stopped.of_kind("exit").all(|r| num(r, "pid") == mover_pid));
}

/// With `--cgroup`, the probes write nothing of tasks outside it: a fork
/// loop beside the scope is not even seen (the summary's `seen` counts only
/// the scope's own events, exactly), and a process that moves in is
/// followed from its move, with its parent and name read from /proc.
#[test]
fn work_outside_the_scope_never_reaches_the_agent() {
    use std::io::Write as _;
    let inside = TestCgroup::new("filter-in", 16, 128 << 20);
    let outside = TestCgroup::new("filter-out", 16, 128 << 20);
    let scope = dir(inside.pids_dir());
    let agent = Agent::start(&["--cgroup", &scope]);

    let (status, _) = run(&mut outside.workload(&["forks", "2000"]));
    assert!(status.success(), "outside loop: {status}");
    let (status, out) = run(&mut inside.workload(&["spawn", "3", "/bin/true"]));
    assert!(status.success(), "inside workload: {status}");
    let wpid = num(&parse(&out), "pid");

    // A shell started outside, moved in, then forking there.
    let mut mover = outside
        .command("/bin/bash")
        .args(["-c", "read line; /bin/true; read line"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("spawn bash");
    let mover_pid = u64::from(mover.id());
    std::thread::sleep(Duration::from_millis(200));
    std::fs::write(
        inside.pids_dir().join("cgroup.procs"),
        mover_pid.to_string(),
    )
    .expect("move in");
    let mut stdin = mover.stdin.take().expect("stdin");
    stdin.write_all(b"go\n").expect("write");
    let mut agent = agent;
    let fork = agent.wait_for(Duration::from_secs(10), "the mover's fork", |r| {
        r["kind"] == "fork" && r["ppid"].as_u64() == Some(mover_pid)
    });
    assert_eq!(fork["parent_comm"], "bash", "{fork}");
    assert_eq!(fork["cgroup"], scope.as_str(), "{fork}");
    // Out again: its exit is not written.
    std::fs::write(
        outside.pids_dir().join("cgroup.procs"),
        mover_pid.to_string(),
    )
    .expect("move out");
    std::thread::sleep(Duration::from_millis(200));
    stdin.write_all(b"go\n").expect("write");
    drop(stdin);
    assert!(mover.wait().expect("wait bash").success());
    let stopped = agent.stop();

    let seen = &stopped.summary()["seen"];
    // The inside workload: its exec, three forks, three execs of true,
    // four exits. The mover: one fork, the exec and exit of its true.
    assert_eq!(
        (num(seen, "fork"), num(seen, "exec"), num(seen, "exit")),
        (3 + 1, 1 + 3 + 1, 4 + 1),
        "the 2000 forks outside reached the agent, or the scope's did not: {}",
        stopped.summary()
    );
    assert!(
        stopped.of_kind("exit").all(|r| num(r, "pid") != mover_pid),
        "the mover's exit outside the scope was written"
    );
    assert!(
        stopped
            .of_kind("exit")
            .any(|r| num(r, "pid") == wpid && r["exit_code"] == 0),
        "no exit of the inside workload"
    );
}
