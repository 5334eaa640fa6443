//! A pipeline on fixtures, for the detectors' glue tests: a fake /proc
//! (the processes known at start), a fake host (cgroup task counts and
//! limits, memory, PSI), synthetic events and an injected clock; records
//! read back as JSON. Nothing here reads the machine it runs on.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use super::{Pipeline, Settings, plugin::Plugin};
use crate::{
    detect::{
        Detectors,
        blocked::{BlockedDetector, BlockedRules, Wait},
        fork::{ForkDetector, ForkRules},
        memory::{MemUsage, MemoryDetector, MemoryRules},
        switches::Ignore,
    },
    host::cgroup::Hierarchies,
    host::clock::WallClock,
    host::observe::{Host, MemoryPressure},
    host::proctable::ProcessTable,
    host::scope::Scope,
    kernel::decode::{Comm, Event, Exec, Exit, ExitStatus, Fork},
    output::{Format, Output},
    respond::{
        act::{ProcState, Reach, System},
        kernel_scope::BudgetLimits,
        policy::ActionKind,
        protect::{Protected, Protection},
    },
};

/// A hybrid host: v1 pids and memory, v2 beside them.
const MOUNTINFO: &str = "\
31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
33 30 0:29 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
34 30 0:30 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
";
const OWN_CGROUP: &str = "9:memory:/\n8:pids:/\n0::/\n";

/// Where the fixture's processes live, in both v1 hierarchies.
pub const JOBS: &str = "/jobs";
pub const PIDS_JOBS: &str = "/sys/fs/cgroup/pids/jobs";
pub const MEMORY_JOBS: &str = "/sys/fs/cgroup/memory/jobs";

pub const MS: u64 = 1_000_000;
pub const SEC: u64 = 1_000_000_000;

/// The host as the fixture says it is.
#[derive(Default)]
pub struct FakeHost {
    /// cgroup directory → (pids.current, pids.max).
    pub pids: Mutex<HashMap<String, (u64, Option<u64>)>>,
    /// memory cgroup directory → its usage and limit.
    pub memcg: Mutex<HashMap<String, MemUsage>>,
    pub host_memory: Mutex<Option<MemUsage>>,
    /// tgid → unreclaimable bytes.
    pub processes: Mutex<HashMap<u32, u64>>,
    /// Tasks on the host, and its task limit (`host_pids`); by default
    /// 300 of 4,194,304.
    pub host_tasks: Mutex<Option<(u64, u64)>>,
    pub pressure: Mutex<Option<MemoryPressure>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl FakeHost {
    pub fn set_pids(&self, dir: &str, current: u64, limit: Option<u64>) {
        lock(&self.pids).insert(dir.to_owned(), (current, limit));
    }

    pub fn set_memcg(&self, dir: &str, unreclaimable: u64, limit: u64) {
        lock(&self.memcg).insert(
            dir.to_owned(),
            MemUsage {
                usage: unreclaimable,
                unreclaimable,
                limit,
            },
        );
    }
}

impl Host for FakeHost {
    fn cgroup_pids(&self, dir: &str) -> Option<(u64, Option<u64>)> {
        lock(&self.pids).get(dir).copied()
    }
    fn host_pids(&self) -> Option<(u64, u64)> {
        Some(lock(&self.host_tasks).unwrap_or((300, 4_194_304)))
    }
    fn memory_limit(&self, dir: &str) -> Option<u64> {
        lock(&self.memcg).get(dir).map(|u| u.limit)
    }
    fn memcg_usage(&self, dir: &str) -> Option<MemUsage> {
        lock(&self.memcg).get(dir).copied()
    }
    fn host_memory(&self) -> Option<MemUsage> {
        *lock(&self.host_memory)
    }
    fn process_unreclaimable(&self, tgid: u32) -> Option<u64> {
        lock(&self.processes).get(&tgid).copied()
    }
    fn swap_activity(&self) -> Option<(u64, u64)> {
        None
    }
    fn memory_pressure(&self) -> Option<MemoryPressure> {
        *lock(&self.pressure)
    }
    fn task_wait(&self, _tgid: u32, _pid: u32) -> Wait {
        Wait {
            wchan: Some("fixture_wait".into()),
            frames: vec!["fixture_wait".into()],
        }
    }
    fn cgroup_exists(&self, dir: &str) -> bool {
        lock(&self.memcg).contains_key(dir) || lock(&self.pids).contains_key(dir)
    }
}

/// The kernel's side as the pipeline sees it (`respond::act::System`),
/// recording what it is asked: tags, budgets, exemptions, releases; every
/// process runs until the test says otherwise.
#[derive(Default)]
pub struct FakeSystem {
    /// tgid → tag.
    pub tags: Mutex<HashMap<u32, u64>>,
    pub states: Mutex<HashMap<u32, ProcState>>,
    pub budgets: Mutex<Vec<u64>>,
    pub released: Mutex<Vec<u64>>,
    pub exempt_pids: Mutex<HashMap<u32, bool>>,
    /// (directory, verdict) handed to the fork probe.
    pub exempt_cgroups: Mutex<Vec<(String, u32)>>,
    /// Refusals in force: tag → what the kernel refused.
    pub refusals: Mutex<HashMap<u64, guard_common::Refusal>>,
    pub lifted: Mutex<Vec<u64>>,
}

impl System for FakeSystem {
    fn tag(&self, tgid: u32, _born_ns: u64, tag: u64) -> Reach {
        lock(&self.tags).insert(tgid, tag);
        Reach::Done
    }
    fn condemn(&self, _tag: u64, _signal: i32) {}
    fn release(&self, tag: u64) {
        lock(&self.released).push(tag);
    }
    fn tagged(&self, tag: u64) -> Vec<u32> {
        lock(&self.tags)
            .iter()
            .filter(|(_, t)| **t == tag)
            .map(|(p, _)| *p)
            .collect()
    }
    fn signal_tagged(&self, _tgid: u32, _tag: u64, _signal: i32) -> Reach {
        Reach::Done
    }
    fn protected(&self, _tgid: u32) -> Option<&'static str> {
        None
    }
    fn untag(&self, tgid: u32) {
        lock(&self.tags).remove(&tgid);
    }
    fn state(&self, tgid: u32) -> ProcState {
        lock(&self.states)
            .get(&tgid)
            .copied()
            .unwrap_or(ProcState::Running)
    }
    fn budget(&self, tag: u64, _live: u64, _limits: BudgetLimits) {
        lock(&self.budgets).push(tag);
    }
    fn tag_of(&self, tgid: u32) -> Option<u64> {
        lock(&self.tags).get(&tgid).copied()
    }
    fn exempt_pid(&self, tgid: u32, exempt: bool) {
        lock(&self.exempt_pids).insert(tgid, exempt);
    }
    fn scope_cgroup(&self, dir: &str, verdict: u32) {
        lock(&self.exempt_cgroups).push((dir.to_owned(), verdict));
    }
    fn refuse(&self, tag: u64) -> bool {
        lock(&self.refusals).entry(tag).or_default();
        true
    }
    fn refusal(&self, tag: u64) -> Option<guard_common::Refusal> {
        lock(&self.refusals).get(&tag).copied()
    }
    fn lift(&self, tag: u64) {
        lock(&self.refusals).remove(&tag);
        lock(&self.lifted).push(tag);
    }
}

/// Settings with every action `log` and nothing ignored or switched off.
pub fn settings() -> Settings {
    Settings {
        events: crate::cli::KindSet(guard_common::EventKind::ALL.into_iter().collect()),
        threads: false,
        fork_action: ActionKind::Log,
        mem_action: ActionKind::Log,
        crashloop_action: ActionKind::Log,
        dry_run: false,
        kernel_tags: false,
        kernel_filter: false,
        off: Vec::new(),
        ignore_fork: Ignore::default(),
        ignore_memory: Ignore::default(),
        ignore_blocked: Ignore::default(),
        ignore_leak: Ignore::default(),
        leak_action: ActionKind::Log,
        policies: crate::respond::policy::Policies::default(),
        prefer: Vec::new(),
        refusal: crate::respond::refusal::RefusalRules::default(),
        refusal_available: true,
    }
}

/// A temporary directory, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("guard-pipeline-fixture-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&path).expect("create the fixture's /proc");
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A process known at start: (tgid, ppid, comm), in [`JOBS`].
pub type Known = (u32, u32, &'static str);

pub struct Fixture {
    pub pipe: Pipeline<Vec<u8>>,
    pub host: Arc<FakeHost>,
    pub system: Arc<FakeSystem>,
    _proc: TempDir,
}

impl Fixture {
    /// A pipeline over `known` processes, running `plugins`, with
    /// `protected` pids (`--protect PID`).
    pub fn new(
        settings: Settings,
        plugins: Vec<Box<dyn Plugin>>,
        known: &[Known],
        protected: &[u32],
    ) -> Self {
        let proc = TempDir::new();
        for &(tgid, ppid, comm) in known {
            let dir = proc.path().join(tgid.to_string());
            std::fs::create_dir_all(&dir).expect("mkdir");
            std::fs::write(
                dir.join("stat"),
                format!("{tgid} ({comm}) S {ppid} {tgid} {tgid} 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 250 0 0"),
            )
            .expect("stat");
            std::fs::write(
                dir.join("cgroup"),
                format!("9:memory:{JOBS}\n8:pids:{JOBS}\n0::/\n"),
            )
            .expect("cgroup");
        }
        let hierarchies =
            Arc::new(Hierarchies::parse(MOUNTINFO, OWN_CGROUP).expect("the fixture's hierarchies"));
        let mut table = ProcessTable::new(hierarchies, proc.path()).without_v2_ids();
        table.seed();
        let protection = Protection::new(
            Default::default(),
            protected.iter().map(|&p| Protected::Pid(p)).collect(),
            Scope::default(),
            Default::default(),
        )
        // No executable is trusted: nothing is read of this host's /proc.
        .with_exe_reader(Arc::new(|_| None));
        let host = Arc::new(FakeHost::default());
        let system = Arc::new(FakeSystem::default());
        let shared: Arc<dyn System + Send + Sync> = system.clone();
        let out = Output::new(Vec::new(), Format::Json, WallClock::fixed(0));
        let pipe = Pipeline::new(
            settings,
            Scope::default(),
            protection,
            table,
            Detectors {
                fork: ForkDetector::new(ForkRules::default()),
                blocked: BlockedDetector::new(BlockedRules {
                    threshold_ns: 5 * SEC,
                    storm: 10,
                }),
                memory: MemoryDetector::new(MemoryRules {
                    horizon_ns: 10 * SEC,
                    headroom_pct: 80.0,
                    window_ns: 2 * SEC,
                    sustain_ns: 2 * SEC,
                }),
            },
            out,
            Some(shared),
        )
        .with_plugins(plugins)
        .with_host(host.clone());
        Self {
            pipe,
            host,
            system,
            _proc: proc,
        }
    }

    /// The same fixture with its pipeline changed by `change`.
    pub fn map_pipe(self, change: impl FnOnce(Pipeline<Vec<u8>>) -> Pipeline<Vec<u8>>) -> Self {
        let Self {
            pipe,
            host,
            system,
            _proc,
        } = self;
        Self {
            pipe: change(pipe),
            host,
            system,
            _proc,
        }
    }

    /// Every record other than events written since the last call.
    pub fn records(&mut self) -> Vec<serde_json::Value> {
        let written = self.pipe.out.take_written();
        String::from_utf8(written)
            .expect("UTF-8 output")
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("one JSON object a line"))
            .filter(|r| {
                let kind = r["kind"].as_str().unwrap_or("");
                !guard_common::EventKind::ALL
                    .iter()
                    .any(|k| k.name() == kind && r.get("approximate").is_none())
            })
            .collect()
    }

    /// The alerts among [`Fixture::records`].
    pub fn alerts(&mut self) -> Vec<serde_json::Value> {
        self.records()
            .into_iter()
            .filter(|r| r["kind"] == "alert")
            .collect()
    }

    pub fn handle(&mut self, event: Event) {
        self.pipe.handle(&event).expect("handled");
    }
}

fn comm(name: &str) -> Comm {
    Comm::from_str_lossy(name)
}

pub fn fork(at: u64, parent: u32, child: u32, name: &str) -> Event {
    Event::Fork(Fork {
        boot_ns: at,
        parent_pid: parent,
        parent_tgid: parent,
        child_pid: child,
        child_tgid: child,
        child_ppid: parent,
        kernel_thread: false,
        child_cgroup_id: 0,
        parent_comm: comm(name),
        child_comm: comm(name),
    })
}

pub fn exec(at: u64, pid: u32, program: &str) -> Event {
    let name = program.rsplit('/').next().unwrap_or(program);
    Event::Exec(Exec {
        boot_ns: at,
        pid,
        tgid: pid,
        old_pid: pid,
        comm: comm(name),
        filename: program.as_bytes().into(),
        filename_truncated: false,
        cmdline: Some(crate::kernel::decode::Args::of(&[program.as_bytes()])),
        cmdline_truncated: false,
    })
}

pub fn exit(at: u64, pid: u32, ppid: u32, status: ExitStatus, name: &str) -> Event {
    Event::Exit(Exit {
        boot_ns: at,
        pid,
        tgid: pid,
        ppid,
        status,
        group_dead: true,
        kernel_thread: false,
        comm: comm(name),
    })
}

/// An `rss` record: `pid`'s anonymous memory crossed into 64 MiB step
/// `step` (`previous`: the one before, `None` the first seen).
pub fn rss(at: u64, pid: u32, step: u32, previous: Option<u32>) -> Event {
    Event::Rss(crate::kernel::decode::Rss {
        boot_ns: at,
        pid,
        tgid: pid,
        step,
        previous_step: previous,
        file_bytes: 0,
        anon_bytes: u64::from(step) << 26,
        shmem_bytes: 0,
        swap_bytes: 0,
        comm: comm("hog"),
    })
}

/// What `--ignore RULE` (e.g. `fork:program=^/usr/bin/make$`) gives its
/// detector.
pub fn ignoring(rule: &str) -> Ignore {
    let rule = crate::detect::switches::parse_ignore(rule).expect("an --ignore rule");
    let detector = rule.detector.expect("a rule naming its detector");
    Ignore::for_detector(&[rule], detector)
}

/// One `[[policy]]` for `cgroup`, its actions set by `set`.
pub fn policy(
    cgroup: &str,
    set: impl FnOnce(&mut crate::respond::policy::CgroupPolicy),
) -> crate::respond::policy::Policies {
    let mut policy = crate::respond::policy::CgroupPolicy {
        cgroup: cgroup.to_owned(),
        fork_action: None,
        mem_action: None,
        leak_action: None,
        crashloop_action: None,
        namespace: None,
    };
    set(&mut policy);
    crate::respond::policy::Policies::new(vec![policy]).expect("a valid policy")
}

/// A bash bomb rooted at 100: every member forks one copy of itself every
/// 5 ms for `rounds` rounds, nobody exits, a check after each. Returns
/// every request of the checks, and the pids (the root's first).
pub fn bomb(f: &mut Fixture, rounds: u32) -> (Vec<super::ActionRequest>, Vec<u32>) {
    let mut members = vec![100u32];
    let mut next = 1000u32;
    let mut requests = Vec::new();
    for round in 1..=rounds {
        let t = SEC + u64::from(round) * 5 * MS;
        for parent in members.clone() {
            f.handle(fork(t, parent, next, "bash"));
            members.push(next);
            next += 1;
        }
        requests.extend(f.pipe.check(t).expect("check"));
    }
    (requests, members)
}

/// Settings whose fork action is `kill`.
pub fn killing() -> Settings {
    let mut s = settings();
    s.fork_action = ActionKind::Kill;
    s
}

/// An action's outcome: `signalled` members signalled and dead, nothing
/// left running.
pub fn outcome(signalled: usize) -> crate::respond::act::Outcome {
    crate::respond::act::Outcome {
        signalled,
        died: signalled,
        zombies: 0,
        running: 0,
        elapsed_ms: 1.0,
        contained: true,
        spared: 0,
        condemned_by_kernel: false,
        errors: 0,
        error: None,
        condemnation_held: false,
        refused_forks: None,
        slipped_forks: None,
        refusing: false,
        captured: Vec::new(),
        signalled_pids: Vec::new(),
    }
}
