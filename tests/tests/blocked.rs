//! Blocked tasks, for real: writers blocked on a frozen loop-mounted ext4
//! (a storm, with khungtaskd's reports beside guard's), vfork parents in
//! killable waits, and idle kernel threads that must never count.

use std::{
    collections::{BTreeMap, BTreeSet},
    process::{Child, Stdio},
    time::Duration,
};

use guard_tests::{Agent, Defer, FrozenFs, SysctlGuard, TestCgroup, num};
use serde_json::Value;

const WRITERS: usize = 20;

fn pids_of<'a>(records: impl Iterator<Item = &'a Value>) -> BTreeSet<u64> {
    records.map(|r| num(r, "pid")).collect()
}

/// `n` shells in `cg`, each writing a file of its own on the (frozen) `fs`.
fn spawn_writers(fs: &FrozenFs, cg: &TestCgroup, n: usize) -> Vec<Child> {
    (0..n)
        .map(|i| {
            let target = fs.mount.join(format!("file{i}"));
            cg.command("/bin/sh")
                .arg("-c")
                .arg(format!("echo blocked > {}", target.display()))
                .stdout(Stdio::null())
                .spawn()
                .expect("spawn writer")
        })
        .collect()
}

#[test]
fn a_storm_of_writers_on_a_frozen_fs_is_reported_within_threshold_plus_one_second() {
    let panic_on_hang =
        std::fs::read_to_string("/proc/sys/kernel/hung_task_panic").unwrap_or_default();
    assert_eq!(
        panic_on_hang.trim(),
        "0",
        "kernel.hung_task_panic is set: a hung task would panic this machine"
    );
    let fs = FrozenFs::create();
    let cg = TestCgroup::new("storm", 64, 256 << 20);
    // Declared after `fs` and `cg`, so dropped first: thaw before the
    // cgroup kills the (then runnable) writers and the image goes away.
    let _thaw = Defer(|| fs.thaw());
    let _timeout = SysctlGuard::set("/proc/sys/kernel/hung_task_timeout_secs", "4");
    let scope = cg.pids_dir().canonicalize().expect("cgroup dir");
    let scope = scope.to_str().expect("utf8");

    let mut agent = Agent::start(&[
        "--cgroup",
        scope,
        "--events",
        "hung_task,unblocked",
        "--blocked-threshold",
        "2",
        "--blocked-storm",
        &WRITERS.to_string(),
    ]);
    fs.freeze();
    let writers = spawn_writers(&fs, &cg, WRITERS);
    let writer_pids: BTreeSet<u64> = writers.iter().map(|w| u64::from(w.id())).collect();

    let storm = agent.wait_for(Duration::from_secs(20), "storm alert", |r| {
        r["kind"] == "alert" && r["rule"] == "blocked_storm"
    });
    // khungtaskd reports every writer too, once hung_task_timeout_secs
    // passed, and again at each check while it stays blocked.
    let mut hung_first: BTreeMap<u64, Value> = BTreeMap::new();
    while hung_first.len() < WRITERS {
        let hung = agent.wait_for(Duration::from_secs(30), "hung_task events", |r| {
            r["kind"] == "hung_task"
        });
        hung_first.entry(num(&hung, "pid")).or_insert(hung);
    }
    fs.thaw();
    for mut writer in writers {
        let status = writer.wait().expect("wait writer");
        assert!(status.success(), "a writer failed after the thaw");
    }
    agent.wait_for(Duration::from_secs(10), "storm resolved", |r| {
        r["kind"] == "resolved" && r["rule"] == "blocked_storm"
    });
    let stopped = agent.stop();

    // Every writer reported once, past the threshold and within 1 s of it.
    let blocked: Vec<&Value> = stopped.of_kind("blocked").collect();
    assert_eq!(pids_of(blocked.iter().copied()), writer_pids, "{blocked:?}");
    assert_eq!(blocked.len(), WRITERS, "one report per writer: {blocked:?}");
    for b in &blocked {
        let ms = num(b, "blocked_ms");
        assert!((2000..=3000).contains(&ms), "reported after {ms} ms: {b}");
        assert_eq!(b["comm"], "sh", "{b}");
        assert_eq!(b["cgroup"], scope, "{b}");
        assert_eq!(b["killable"], false, "{b}");
        assert_eq!(b["kernel_thread"], false, "{b}");
        // Opening the file for writing waits for the thaw in
        // mnt_want_write (sb_start_write's per-CPU rwsem).
        let stack: Vec<&str> = b["stack"]
            .as_array()
            .expect("stack")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(stack.contains(&"mnt_want_write"), "{b}");
        assert_eq!(b["wchan"], stack[0], "{b}");
    }

    // One storm alert, at exactly the storm size, naming the shared wait.
    let storms: Vec<&Value> = stopped
        .of_kind("alert")
        .filter(|r| r["rule"] == "blocked_storm")
        .collect();
    assert_eq!(storms.len(), 1, "{storms:?}");
    assert_eq!(num(&storm, "count"), WRITERS as u64, "{storm}");
    assert_eq!(num(&storm, "killable"), 0, "{storm}");
    let storm_pids: BTreeSet<u64> = storm["pids"]
        .as_array()
        .expect("pids")
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    assert_eq!(storm_pids, writer_pids, "{storm}");
    assert_eq!(
        num(&storm["shared_wait"], "tasks"),
        WRITERS as u64,
        "{storm}"
    );
    let frames = storm["shared_wait"]["frames"].as_array().expect("frames");
    assert!(
        frames.iter().any(|f| f == "mnt_want_write"),
        "shared wait: {storm}"
    );
    assert_eq!(storm["action"], "log", "{storm}");

    // khungtaskd saw the same tasks, seconds after guard did.
    assert_eq!(
        hung_first.keys().copied().collect::<BTreeSet<_>>(),
        writer_pids
    );
    for hung in hung_first.values() {
        assert_eq!(hung["comm"], "sh", "{hung}");
        assert_eq!(hung["cgroup"], scope, "{hung}");
        let lead = num(hung, "guard_lead_ms");
        assert!(lead > 0, "guard reported after khungtaskd: {hung}");
    }

    // The kernel told when each ran again, with how long it was blocked.
    let unblocked: Vec<&Value> = stopped.of_kind("unblocked").collect();
    assert_eq!(
        pids_of(unblocked.iter().copied()),
        writer_pids,
        "{unblocked:?}"
    );
    assert_eq!(unblocked.len(), WRITERS, "{unblocked:?}");
    for u in &unblocked {
        let report = blocked
            .iter()
            .find(|b| b["pid"] == u["pid"])
            .expect("its report");
        assert_eq!(u["since_ns"], report["since_ns"], "{u}");
        assert!(num(u, "blocked_ms") >= num(report, "blocked_ms"), "{u}");
        assert!(u.get("approximate").is_none(), "{u}");
    }
    let resolved = stopped.of_kind("resolved").next().expect("storm resolved");
    assert_eq!(num(resolved, "peak"), WRITERS as u64, "{resolved}");
}

#[test]
fn killable_vfork_waits_are_reported_as_killable_and_make_no_storm() {
    const PARENTS: usize = 12;
    let cg = TestCgroup::new("vfork", 64, 128 << 20);
    let scope = cg.pids_dir().canonicalize().expect("cgroup dir");
    let scope = scope.to_str().expect("utf8");
    let mut agent = Agent::start(&[
        "--cgroup",
        scope,
        "--events",
        "unblocked",
        "--blocked-threshold",
        "1",
        "--blocked-storm",
        "10",
    ]);
    let parents: Vec<Child> = (0..PARENTS)
        .map(|_| cg.spawn_ready(&["vfork", "3"]))
        .collect();
    let parent_pids: BTreeSet<u64> = parents.iter().map(|p| u64::from(p.id())).collect();
    let mut released = BTreeSet::new();
    while released.len() < PARENTS {
        let u = agent.wait_for(Duration::from_secs(15), "parents released", |r| {
            r["kind"] == "unblocked"
        });
        released.insert(num(&u, "pid"));
    }
    for mut parent in parents {
        assert!(
            parent.wait().expect("wait").success(),
            "a vfork parent failed"
        );
    }
    let stopped = agent.stop();
    assert_eq!(released, parent_pids);

    let blocked: Vec<&Value> = stopped.of_kind("blocked").collect();
    assert_eq!(pids_of(blocked.iter().copied()), parent_pids, "{blocked:?}");
    for b in &blocked {
        assert_eq!(b["killable"], true, "{b}");
        assert_eq!(b["comm"], "guard-workload", "{b}");
    }
    let alerts: Vec<&Value> = stopped.of_kind("alert").collect();
    assert!(alerts.is_empty(), "killable waits raised {alerts:?}");
}

/// TASK_IDLE kernel threads (kworkers waiting for work, rescuers) sleep in
/// uninterruptible state with TASK_NOLOAD: never a blocked task. Writeback
/// after `sync` wakes kworkers that then go idle for seconds; with a 1 s
/// threshold and no scope, any that counted would be reported.
#[test]
fn idle_kernel_threads_are_never_reported() {
    // Unscoped and log-only: guard only reports, on the whole host.
    let agent = Agent::start(&["--events", "unblocked", "--blocked-threshold", "1"]);
    for _ in 0..3 {
        std::fs::write(
            std::env::temp_dir().join(format!("guard-test-idle-{}", std::process::id())),
            vec![b'x'; 1 << 20],
        )
        .expect("write temp file");
        let status = std::process::Command::new("sync").status().expect("sync");
        assert!(status.success());
        std::thread::sleep(Duration::from_millis(1200));
    }
    let _ = std::fs::remove_file(
        std::env::temp_dir().join(format!("guard-test-idle-{}", std::process::id())),
    );
    let idle = idle_tasks();
    assert!(
        idle.len() >= 5,
        "expected idle kernel threads on this host, found {idle:?}"
    );
    let stopped = agent.stop();
    let reported: Vec<&Value> = stopped
        .of_kind("blocked")
        .filter(|b| idle.contains(&num(b, "pid")))
        .collect();
    assert!(
        reported.is_empty(),
        "idle kernel threads reported: {reported:?}"
    );
    for b in stopped.of_kind("blocked") {
        assert_ne!(b["wchan"], "worker_thread", "an idle kworker: {b}");
    }
}

/// Tasks whose /proc state is `I` (TASK_IDLE).
fn idle_tasks() -> BTreeSet<u64> {
    let mut idle = BTreeSet::new();
    for proc in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(tasks) = std::fs::read_dir(proc.path().join("task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                continue;
            };
            let state = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next());
            if state == Some("I")
                && let Ok(pid) = task.file_name().to_string_lossy().parse()
            {
                idle.insert(pid);
            }
        }
    }
    idle
}

/// A storm while a memory cgroup is past its headroom line: the storm is
/// blamed on the memory runaway (the process growing in that cgroup), and
/// the memory detector's policy (`--mem-action`, here `log`) applies.
#[test]
fn a_storm_under_memory_pressure_names_the_memory_runaway() {
    let fs = FrozenFs::create();
    let cg = TestCgroup::new("stormmem", 64, 1 << 30);
    let _thaw = Defer(|| fs.thaw());
    let scope = cg.memory_dir().canonicalize().expect("cgroup dir");
    let scope = scope.to_str().expect("utf8");
    let mut agent = Agent::start(&[
        "--cgroup",
        scope,
        "--blocked-threshold",
        "1",
        "--blocked-storm",
        "10",
        "--mem-action",
        "log",
        "--mem-headroom",
        "60",
    ]);
    // 100 MiB/s toward 900 MiB of a 1 GiB limit: past 60% after ~6 s.
    let hog = cg.spawn_ready(&["grow", "100", "900", "30"]);
    let hog_pid = u64::from(hog.id());
    agent.wait_for(Duration::from_secs(20), "memory headroom alert", |r| {
        r["kind"] == "alert" && r["rule"] == "memory_headroom"
    });
    fs.freeze();
    let writers = spawn_writers(&fs, &cg, 10);
    let storm = agent.wait_for(Duration::from_secs(10), "storm alert", |r| {
        r["kind"] == "alert" && r["rule"] == "blocked_storm"
    });
    fs.thaw();
    for mut w in writers {
        assert!(w.wait().expect("wait writer").success());
    }
    let stopped = agent.stop();
    drop(hog);

    assert_eq!(num(&storm, "count"), 10, "{storm}");
    let reasons: Vec<&str> = storm["memory_pressure"]["reasons"]
        .as_array()
        .expect("reasons")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with(scope) && r.contains("of its memory limit")),
        "{storm}"
    );
    assert_eq!(num(&storm["offender"], "pid"), hog_pid, "{storm}");
    assert_eq!(storm["offender"]["memory_cgroup"], scope, "{storm}");
    assert!(num(&storm["offender"], "growth_bytes") > 0, "{storm}");
    assert_eq!(storm["action"], "log", "{storm}");
    // Log only: nothing was signalled.
    assert!(stopped.of_kind("action").next().is_none());
}
