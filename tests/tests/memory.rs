//! The memory guard, for real, in memory cgroups of the tests' own: a
//! runaway killed before its limit beside a bystander, a block allocated
//! once, a page-cache reader, and the kernel's rss step records.

use std::{
    io::{BufRead as _, BufReader},
    os::unix::process::ExitStatusExt as _,
    process::{Child, ChildStdout, Stdio},
    time::Duration,
};

use guard_tests::{Agent, TestCgroup, num};
use serde_json::Value;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

fn memory_scope(cg: &TestCgroup) -> String {
    cg.memory_dir()
        .canonicalize()
        .expect("memory cgroup dir")
        .to_string_lossy()
        .into_owned()
}

/// A file path on disk (the workspace's target dir, not tmpfs), removed
/// when the returned guard drops.
fn disk_file(name: &str) -> (std::path::PathBuf, guard_tests::Defer<impl FnMut()>) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!(
        "../target/guard-test-{name}-{}",
        std::process::id()
    ));
    let remove = path.clone();
    (
        path,
        guard_tests::Defer(move || {
            let _ = std::fs::remove_file(&remove);
        }),
    )
}

/// `guard-workload grow RATE MIB HOLD`, its output kept open.
struct Grower {
    child: Child,
    lines: BufReader<ChildStdout>,
}

impl Grower {
    /// Starts it and waits for its first line (it is in the cgroup).
    fn start(cg: &TestCgroup, rate: &str, mib: &str, hold: &str) -> Self {
        let mut child = cg
            .workload(&["grow", rate, mib, hold])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn grow");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        lines.read_line(&mut line).expect("read workload line");
        assert!(line.contains("pid"), "workload said {line:?}");
        Grower { child, lines }
    }

    fn pid(&self) -> u64 {
        u64::from(self.child.id())
    }

    /// Waits for its second line: the allocation is done.
    fn wait_allocated(&mut self) {
        let mut line = String::new();
        self.lines.read_line(&mut line).expect("read workload line");
        assert!(line.contains("allocated_mib"), "workload said {line:?}");
    }
}

#[test]
fn a_runaway_is_killed_before_the_limit_and_the_bystander_lives() {
    let cg = TestCgroup::new("memhog", 32, GIB);
    let scope = memory_scope(&cg);
    let mut agent = Agent::start(&["--cgroup", &scope, "--mem-action", "kill"]);
    // A bystander holding 200 MiB, steady, before the runaway starts.
    let mut bystander = Grower::start(&cg, "0", "200", "60");
    bystander.wait_allocated();
    std::thread::sleep(Duration::from_millis(2500));
    // The runaway: 200 MiB/s toward 2 GiB in a 1 GiB cgroup.
    let hog = Grower::start(&cg, "200", "2048", "30");
    let hog_pid = hog.pid();
    let action = agent.wait_for(Duration::from_secs(20), "memory action", |r| {
        r["kind"] == "action" && r["detector"] == "memory"
    });
    let Grower { mut child, .. } = hog;
    let status = child.wait().expect("wait hog");
    assert_eq!(status.signal(), Some(libc::SIGKILL), "the hog must die");
    let stopped = agent.stop();

    let alert = stopped
        .of_kind("alert")
        .find(|r| r["detector"] == "memory")
        .expect("memory alert");
    assert_eq!(num(&alert["offender"], "pid"), hog_pid, "{alert}");
    assert_eq!(alert["cgroup"], scope.as_str(), "{alert}");
    assert_eq!(num(alert, "limit_bytes"), GIB, "{alert}");
    assert_eq!(alert["action"], "kill", "{alert}");
    let usage = num(alert, "usage_bytes");
    assert!(usage < GIB, "alert at {usage} bytes");
    let rate = alert["mib_per_sec"].as_f64().expect("rate");
    assert!(
        (100.0..=300.0).contains(&rate),
        "rate {rate} MiB/s: {alert}"
    );
    assert!(alert["eta_secs"].as_f64().is_some(), "{alert}");
    assert!(
        num(&alert["offender"], "growth_bytes") >= 64 * MIB,
        "{alert}"
    );

    assert_eq!(action["outcome"]["contained"], true, "{action}");
    assert_eq!(num(&action["outcome"], "signalled"), 1, "{action}");
    let freed = num(&action, "freed_bytes");
    assert!(freed >= 64 * MIB, "freed only {freed} bytes: {action}");
    // The kernel's OOM killer never ran, and the bystander is alive.
    assert_eq!(cg.oom_kills(), 0, "the OOM killer fired");
    assert!(
        bystander.child.try_wait().expect("try_wait").is_none(),
        "the bystander died"
    );
    assert!(
        stopped
            .of_kind("oom_kill")
            .all(|r| r["cgroup"] != scope.as_str())
    );
}

/// On hybrid v1 a policy matches a process through any of its cgroups:
/// `mem-action = "kill"` in a policy on the pids cgroup
/// (`/sys/fs/cgroup/pids/<cg>`) kills a runaway the memory rule judges in
/// its memory cgroup (here at another path, under the harness's own),
/// while the file's own `mem-action` is `log`.
#[test]
fn a_policy_on_the_pids_path_gives_the_memory_rule_its_action() {
    let cg = TestCgroup::new("mempolicy", 32, GIB);
    let scope = memory_scope(&cg);
    let pids = cg.pids_dir().to_str().expect("utf8").to_owned();
    let dir = guard_tests::RootDir::new("mempolicy");
    let config = dir.path.join("guard.toml");
    std::fs::write(
        &config,
        format!(
            "mem-action = \"log\"\ncgroup = [{scope:?}]\n\n[[policy]]\ncgroup = {pids:?}\nmem-action = \"kill\"\n"
        ),
    )
    .expect("write config");
    let mut agent = Agent::start(&["--config", config.to_str().expect("utf8")]);
    let hog = Grower::start(&cg, "200", "2048", "30");
    let hog_pid = hog.pid();
    let action = agent.wait_for(Duration::from_secs(20), "memory action", |r| {
        r["kind"] == "action" && r["detector"] == "memory"
    });
    assert_eq!(action["action"], "kill", "{action}");
    assert_eq!(num(&action["offender"], "pid"), hog_pid, "{action}");
    let Grower { mut child, .. } = hog;
    let status = child.wait().expect("wait hog");
    assert_eq!(status.signal(), Some(libc::SIGKILL), "the hog must die");
    agent.stop();
    assert_eq!(cg.oom_kills(), 0, "the OOM killer fired");
}

#[test]
fn a_block_allocated_once_and_held_raises_nothing() {
    let cg = TestCgroup::new("memblock", 32, GIB);
    let scope = memory_scope(&cg);
    let agent = Agent::start(&["--cgroup", &scope, "--mem-action", "kill"]);
    let mut block = Grower::start(&cg, "0", "600", "30");
    block.wait_allocated();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        block.child.try_wait().expect("try_wait").is_none(),
        "block died"
    );
    let stopped = agent.stop();
    let alerts: Vec<&Value> = stopped.of_kind("alert").collect();
    assert!(alerts.is_empty(), "{alerts:?}");
    // It was seen: its rss records went up to step 9 (600 MiB of anon and a
    // few MiB of the program's own pages: 9 × 64 MiB and some).
    let top = stopped
        .of_kind("rss")
        .filter(|r| num(r, "pid") == block.pid())
        .map(|r| num(r, "step"))
        .max()
        .expect("rss records of the block");
    assert_eq!(top, 9);
}

#[test]
fn reading_a_large_file_grows_page_cache_and_raises_nothing() {
    let cg = TestCgroup::new("memcache", 32, 512 * MIB);
    let scope = memory_scope(&cg);
    // 1.5 GiB on disk (the workspace's target dir, not tmpfs), out of the
    // page cache before the read so that the reader's cgroup is charged.
    let (path, _remove) = disk_file("cache");
    {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&path).expect("create file");
        let chunk = vec![7u8; 8 << 20];
        for _ in 0..192 {
            f.write_all(&chunk).expect("write");
        }
        f.sync_all().expect("sync");
        // SAFETY: plain syscall on a file we own.
        let rc = unsafe {
            libc::posix_fadvise(
                std::os::fd::AsRawFd::as_raw_fd(&f),
                0,
                0,
                libc::POSIX_FADV_DONTNEED,
            )
        };
        assert_eq!(rc, 0, "fadvise");
    }
    let agent = Agent::start(&["--cgroup", &scope, "--mem-action", "kill"]);
    let status = cg
        .command("/bin/cat")
        .arg(&path)
        .stdout(Stdio::null())
        .status()
        .expect("cat");
    assert!(status.success(), "the reader failed");
    std::thread::sleep(Duration::from_millis(600));
    let stopped = agent.stop();
    let alerts: Vec<&Value> = stopped.of_kind("alert").collect();
    assert!(alerts.is_empty(), "{alerts:?}");
    // The page cache did fill the cgroup (v1 max_usage_in_bytes, v2 peak).
    let peak = ["memory.max_usage_in_bytes", "memory.peak"]
        .iter()
        .find_map(|f| std::fs::read_to_string(cg.memory_dir().join(f)).ok())
        .and_then(|t| t.trim().parse::<u64>().ok())
        .expect("peak usage");
    assert!(peak >= 400 * MIB, "the read charged only {peak} bytes");
    assert_eq!(cg.oom_kills(), 0);
}

#[test]
fn rss_steps_of_a_process_growing_512_mib() {
    let cg = TestCgroup::new("memsteps", 32, GIB);
    let scope = memory_scope(&cg);
    let agent = Agent::start(&["--cgroup", &scope, "--events", "rss"]);
    let mut grower = Grower::start(&cg, "0", "512", "0");
    let pid = grower.pid();
    grower.wait_allocated();
    assert!(grower.child.wait().expect("wait").success());
    let stopped = agent.stop();
    let steps: Vec<&Value> = stopped
        .of_kind("rss")
        .filter(|r| num(r, "pid") == pid)
        .filter(|r| {
            r["previous_step"]
                .as_u64()
                .is_some_and(|p| p < num(r, "step"))
        })
        .collect();
    // One record per 64 MiB of anonymous + shmem memory crossed on the way
    // up: steps 1..=8 (file pages do not count).
    let numbers: Vec<u64> = steps.iter().map(|r| num(r, "step")).collect();
    assert_eq!(numbers, (1..=8).collect::<Vec<_>>(), "{steps:?}");
    for r in &steps {
        let held = num(r, "anon_bytes") + num(r, "shmem_bytes");
        let boundary = num(r, "step") * 64 * MIB;
        assert!(
            (boundary..boundary + MIB).contains(&held),
            "anon + shmem {held} not just past {boundary}: {r}"
        );
        assert_eq!(num(r, "tgid"), pid, "{r}");
        assert_eq!(r["comm"], "guard-workload", "{r}");
        assert_eq!(r["cgroup"], scope.as_str(), "{r}");
    }
    assert!(num(steps[7], "anon_bytes") >= 500 * MIB, "{}", steps[7]);
}

#[test]
fn a_writer_through_a_small_memcg_stalls_in_reclaim_and_raises_nothing() {
    let cg = TestCgroup::new("memwrite", 16, 64 * MIB);
    let scope = memory_scope(&cg);
    let (path, _remove) = disk_file("write");
    let agent = Agent::start(&[
        "--cgroup",
        &scope,
        "--events",
        "reclaim_stall",
        "--reclaim-stall-ms",
        "5",
        "--mem-action",
        "kill",
    ]);
    // 1 GiB of dirty page cache through a 64 MiB limit: the cgroup's own
    // reclaim waits for writeback.
    let mut dd = cg
        .command("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", path.display()))
        .args(["bs=1M", "count=1024", "status=none"])
        .spawn()
        .expect("dd");
    let pid = u64::from(dd.id());
    assert!(dd.wait().expect("wait dd").success(), "dd failed");
    std::thread::sleep(Duration::from_millis(500));
    let stopped = agent.stop();
    let stalls: Vec<&Value> = stopped.of_kind("reclaim_stall").collect();
    assert!(!stalls.is_empty(), "no reclaim stall seen");
    for s in &stalls {
        assert_eq!(num(s, "pid"), pid, "{s}");
        assert_eq!(s["comm"], "dd", "{s}");
        assert!(num(s, "stall_us") >= 5000, "{s}");
        assert!(num(s, "nr_reclaimed") > 0, "{s}");
    }
    let alerts: Vec<&Value> = stopped.of_kind("alert").collect();
    assert!(alerts.is_empty(), "page cache raised {alerts:?}");
    assert_eq!(cg.oom_kills(), 0);
}

/// Runs a collective runaway in `cg` beside a bystander holding 200 MiB,
/// the agent killing memory offenders, and returns the memory action and
/// the runaway's first process.
fn collective(cg: &TestCgroup, script: &str) -> (Value, u32, Grower, guard_tests::Stopped) {
    let scope = memory_scope(cg);
    let mut agent = Agent::start(&[
        "--cgroup",
        &scope,
        "--mem-action",
        "kill",
        "--events",
        "exit",
    ]);
    let mut bystander = Grower::start(cg, "0", "200", "120");
    bystander.wait_allocated();
    std::thread::sleep(Duration::from_millis(1500));
    let mut runaway = cg.spawn_bash(script);
    let root = runaway.id();
    let action = agent.wait_for(Duration::from_secs(30), "a memory action", |r| {
        r["kind"] == "action" && r["detector"] == "memory"
    });
    let _ = runaway.wait();
    std::thread::sleep(Duration::from_millis(500));
    let stopped = agent.stop();
    (action, root, bystander, stopped)
}

/// A runner whose four workers all grow at 60 MiB/s toward 400 MiB each,
/// in a 1 GiB cgroup: the runner's subtree is killed whole, before the
/// kernel's OOM killer, and the bystander lives. (guard used to kill the
/// workers one at a time while the OOM killer still fired.)
#[test]
fn a_runner_whose_workers_leak_together_is_killed_whole() {
    let cg = TestCgroup::new("memrunner", 64, GIB);
    let w = guard_tests::workload_bin();
    let script = format!(
        "for i in 1 2 3 4; do {} grow 60 400 120 > /dev/null & done; wait",
        w.display()
    );
    let (action, root, mut bystander, stopped) = collective(&cg, &script);
    assert_eq!(
        num(&action["offender"], "pid"),
        u64::from(root),
        "the runner: {action}"
    );
    assert!(
        num(&action, "members") >= 5,
        "the runner and its 4 workers: {action}"
    );
    assert_eq!(action["outcome"]["contained"], true, "{action}");
    assert!(
        num(&action["offender"], "growth_bytes") >= 128 * MIB,
        "{action}"
    );
    assert_eq!(cg.oom_kills(), 0, "the OOM killer fired");
    assert!(
        bystander.child.try_wait().expect("try_wait").is_none(),
        "the bystander died"
    );
    let actions = stopped
        .of_kind("action")
        .filter(|r| r["detector"] == "memory")
        .count();
    assert_eq!(actions, 1, "one action for the whole runner");
    assert_eq!(
        cg.live_named("guard-workload"),
        1,
        "only the bystander is left"
    );
    let _ = bystander.child.kill();
    let _ = bystander.child.wait();
}

/// A server spawning children that each hold 30 MiB and never exit, five
/// a second, in a 1 GiB cgroup: none crosses an rss step, together they
/// run the cgroup out. The server is the offender, its children die with
/// it, and the bystander lives.
#[test]
fn a_server_spawning_children_that_hold_memory_is_killed_whole() {
    let cg = TestCgroup::new("memserver", 512, GIB);
    let w = guard_tests::workload_bin();
    let script = format!(
        "while :; do {} alloc 30 600 > /dev/null & sleep 0.2; done",
        w.display()
    );
    let (action, root, mut bystander, _stopped) = collective(&cg, &script);
    assert_eq!(
        num(&action["offender"], "pid"),
        u64::from(root),
        "the server: {action}"
    );
    assert!(
        num(&action, "members") >= 10,
        "the server and its children: {action}"
    );
    assert_eq!(action["outcome"]["contained"], true, "{action}");
    assert_eq!(cg.oom_kills(), 0, "the OOM killer fired");
    assert!(
        bystander.child.try_wait().expect("try_wait").is_none(),
        "the bystander died"
    );
    assert_eq!(
        cg.live_named("guard-workload"),
        1,
        "only the bystander is left"
    );
    let _ = bystander.child.kill();
    let _ = bystander.child.wait();
}
