//! The per-event stages after decode: process table (enrich) → detectors →
//! action requests → output. Owns their state; `agent` feeds it events and
//! clock ticks, runs the actions it requests (through `act`), and hands the
//! outcomes back.

use std::{
    collections::{HashMap, HashSet},
    io::{self, Write},
    sync::Arc,
};

use guard_common::{EventKind, KIND_SLOTS};
use serde_json::{Value, json};

use crate::{
    act::{Member, Outcome, ProcState, System},
    cli::KindSet,
    clock::WallClock,
    decode::{Event, ExitStatus},
    detect::{
        Detectors,
        blocked::{BlockedTask, BlockedVerdict},
        crashloop::{CrashLoop, ExitInfo, LoopKey, systemd_unit},
        fork::{CgroupKey, ForkVerdict, find_offender},
        memory::{Grower, HOST, MemoryRule, MemoryVerdict, PoolKey},
        subtree,
        switches::{Detector, Ignore},
    },
    kernel_scope::BudgetLimits,
    observe,
    output::{Context, Output, human_duration},
    policy::ActionKind,
    proctable::{Lineage, NodeId, ProcessTable},
    protect::Protection,
    scope::Scope,
    source::{BlockedBookkeeping, LossCounter},
};

/// What the stream shows and what verdicts lead to.
pub struct Settings {
    pub events: KindSet,
    pub threads: bool,
    pub fork_action: ActionKind,
    pub mem_action: ActionKind,
    /// `log` or `stop` (of the restarting supervisor).
    pub crashloop_action: ActionKind,
    pub dry_run: bool,
    /// The fork probe tags and budgets every subtree in scope by itself
    /// (see `kernel_scope`): the agent's own early watch is not needed.
    pub kernel_tags: bool,
    /// Detectors switched off (`--off`, `--crashloop off`).
    pub off: Vec<Detector>,
    /// What the fork, memory and blocked-task detectors leave alone (the
    /// crash-loop detector holds its own).
    pub ignore_fork: Ignore,
    pub ignore_memory: Ignore,
    pub ignore_blocked: Ignore,
    pub ignore_leak: Ignore,
    /// What a leak alert leads to.
    pub leak_action: ActionKind,
}

impl Settings {
    pub fn runs(&self, detector: Detector) -> bool {
        !self.off.contains(&detector)
    }
}

/// PSI `full` avg10 (percent) that counts as memory pressure for a storm.
const PSI_FULL_PRESSURE: f64 = 10.0;

/// Reclaim stalls this recent count as memory pressure for a storm.
const RECENT_RECLAIM_NS: u64 = 10_000_000_000;

/// Shortest time between two readings of one memory cgroup driven by `rss`
/// records (a fast allocator crosses a 64 MiB step every few ms).
const POOL_SAMPLE_GAP_NS: u64 = 20_000_000;

/// Threads whose depth is remembered, at most (exits lost: forget them).
const THREADS_KEPT: usize = 65536;

/// A snapshot of a pool's members: (when, tgid → unreclaimable bytes).
type Baseline = (u64, HashMap<u32, u64>);

/// Swap-ins and refaults a second, each, that make the host thrashing.
const THRASHING_PAGES_PER_SEC: f64 = 256.0;

/// How often a growing pool's members are snapshotted.
const BASELINE_EVERY_NS: u64 = 15_000_000_000;

/// OOM victims remembered until their exit, at most.
const OOM_VICTIMS_KEPT: usize = 4096;

/// A subtree to contain, for `agent` to run through `act::contain`.
#[derive(Clone, Debug)]
pub struct ActionRequest {
    pub detector: &'static str,
    pub rule: &'static str,
    /// The subtree's lineage tag in the kernel: the offender's lineage
    /// node, or a tag the fork probe gave it (see `guard_common::auto_tag`).
    pub tag: u64,
    /// The offender's lineage node, when known (the root of a subtree the
    /// fork probe tagged may be gone before the agent hears of it).
    pub root: Option<NodeId>,
    pub kind: ActionKind,
    pub offender: Value,
    pub members: Vec<Member>,
    /// Memory actions: the pool and its unreclaimable bytes at the alert.
    pub pool: Option<(PoolKey, u64)>,
    /// How many follow-ups came before this one (0: the first action).
    pub follow_ups: u32,
}

/// Most follow-up rounds after one action: members born before they could
/// be tagged are caught within one or two; more means they cannot be.
const MAX_FOLLOW_UPS: u32 = 3;

/// Whether a member in `state` still needs the action's signal: one that is
/// gone or a zombie never does, nor one that a `stop` has stopped already.
/// (Taking a stopped member for one left to stop made `stop` request a
/// follow-up every few ms, for ever, in SCHED_FIFO.)
fn still_to_contain(kind: ActionKind, state: ProcState) -> bool {
    match state {
        ProcState::Gone | ProcState::Zombie => false,
        ProcState::Stopped => kind == ActionKind::Kill,
        ProcState::Running => true,
    }
}

/// The fields every `action` record starts with.
fn action_fields(request: &ActionRequest, dry_run: bool) -> Vec<(&'static str, Value)> {
    vec![
        ("detector", json!(request.detector)),
        ("rule", json!(request.rule)),
        ("action", json!(request.kind)),
        ("dry_run", json!(dry_run)),
        ("offender", request.offender.clone()),
    ]
}

/// The live members of `root`'s subtree that may be signalled.
fn unprotected_members(lineage: &Lineage, protection: &Protection, root: NodeId) -> Vec<Member> {
    lineage
        .live_descendants(root)
        .into_iter()
        .filter_map(|(tgid, id)| {
            let node = lineage.get(id)?;
            protection.why(node).is_none().then_some(Member {
                tgid,
                born_ns: node.born_ns,
            })
        })
        .collect()
}

pub struct Counters {
    pub seen: [u64; KIND_SLOTS as usize],
    pub shown: u64,
}

pub struct Pipeline<W: Write> {
    pub settings: Settings,
    pub scope: Scope,
    pub protection: Protection,
    pub table: ProcessTable,
    pub detectors: Detectors,
    pub counters: Counters,
    pub out: Output<W>,
    /// Hierarchy whose paths events show.
    primary: usize,
    /// Hierarchy the fork detector counts in (where pids.max lives).
    pids_index: usize,
    /// Hierarchy of memory limits (v1 memory, else v2).
    mem_index: Option<usize>,
    /// Memory cgroup directory → the pool it counts against (itself or the
    /// nearest ancestor with a limit; `None`: only the host's).
    pool_of_dir: HashMap<Arc<str>, Option<PoolKey>>,
    /// Offenders with an action under way.
    active: HashSet<NodeId>,
    /// Suspected offenders of armed cgroups, tagged ahead of any alert.
    watched: HashSet<NodeId>,
    /// Lineage nodes of subtrees tagged in the kernel (watched, or being
    /// acted on) → (their tag, since when the node carries it, boot ns). A
    /// process born to one of them joins (transitively: fork events arrive
    /// in order). Born after its parent was tagged, it got the tag from the
    /// fork probe; born before, it is tagged here, so no member escapes.
    tagged: HashMap<NodeId, (NodeId, u64)>,
    system: Option<Arc<dyn System + Send + Sync>>,
    /// Actions decided outside `check` (a storm's memory runaway), handed
    /// out by the next `check`.
    pending: Vec<ActionRequest>,
    /// When a task last stalled in reclaim (in scope), boot ns.
    last_reclaim_stall_ns: Option<u64>,
    /// Threads of processes in scope → their depth in threads started by
    /// threads (the main thread's is its process's).
    thread_depth: HashMap<u32, u32>,
    /// Pids of ignored programs (`--ignore fork:program=`) the fork probe
    /// leaves alone until they exit, and cgroups it leaves alone.
    exempt_pids: HashSet<u32>,
    exempt_cgroups: HashSet<Arc<str>>,
    /// Processes the OOM killer chose, until their exit: their SIGKILL is a
    /// crash (anyone else's is not).
    oom_victims: HashSet<u32>,
    /// Per memory pool, up to two snapshots (time, tgid → unreclaimable
    /// bytes) taken while it grew: what subtree growth is measured from.
    baselines: HashMap<PoolKey, std::collections::VecDeque<Baseline>>,
    /// The last /proc/vmstat swap counters (time, pswpin, refaults), and
    /// the host's memory pressure at the last reading, when it was under it.
    last_swap: Option<(u64, u64, u64)>,
    pressure_now: Option<Value>,
    /// Every event lost so far, in the kernel and the agent's queue.
    losses: Option<LossCounter>,
    /// Its value at the last recount.
    losses_seen: u64,
    /// A sweep of the table is due (events were lost).
    sweep_pending: bool,
    /// The newest event handled, boot ns.
    last_event_ns: u64,
}

/// How far behind the kernel the pipeline may be to count as caught up.
const CAUGHT_UP_NS: u64 = 200_000_000;

impl<W: Write> Pipeline<W> {
    pub fn new(
        settings: Settings,
        scope: Scope,
        protection: Protection,
        table: ProcessTable,
        detectors: Detectors,
        out: Output<W>,
        system: Option<Arc<dyn System + Send + Sync>>,
    ) -> Self {
        let h = table.hierarchies();
        let primary = h.primary;
        let pids_index = h.pids_index();
        let mem_index = h.index_of_controller("memory").or_else(|| h.index_of_id(0));
        Self {
            settings,
            scope,
            protection,
            table,
            detectors,
            counters: Counters {
                seen: [0; KIND_SLOTS as usize],
                shown: 0,
            },
            out,
            primary,
            pids_index,
            mem_index,
            pool_of_dir: HashMap::new(),
            active: HashSet::new(),
            watched: HashSet::new(),
            tagged: HashMap::new(),
            system,
            pending: Vec::new(),
            last_reclaim_stall_ns: None,
            oom_victims: HashSet::new(),
            exempt_pids: HashSet::new(),
            baselines: HashMap::new(),
            last_swap: None,
            pressure_now: None,
            thread_depth: HashMap::new(),
            exempt_cgroups: HashSet::new(),
            losses: None,
            losses_seen: 0,
            sweep_pending: false,
            last_event_ns: 0,
        }
    }

    /// Recount populations whenever `losses` has grown (see
    /// [`Pipeline::recount_after_losses`]).
    pub fn with_loss_counter(mut self, losses: LossCounter) -> Self {
        self.losses_seen = losses();
        self.losses = Some(losses);
        self
    }

    /// When events were lost since the last look, the live counts the fork
    /// detector kept from births and exits are unknown: drops table entries
    /// whose process is gone and recounts every population from the table.
    /// True when it recounted.
    pub fn recount_after_losses(&mut self, now: u64) -> bool {
        let Some(total) = self.losses.as_ref().map(|count| count()) else {
            return false;
        };
        if total == self.losses_seen {
            return false;
        }
        self.losses_seen = total;
        let mut counts: HashMap<CgroupKey, u32> = HashMap::new();
        for p in self.table.processes() {
            if let Some(key) = self.population_key(&p.cgroups, p.kernel_thread)
                && self.table.exists(p.tgid)
            {
                *counts.entry(key).or_default() += 1;
            }
        }
        self.detectors.fork.recount(now, &counts);
        self.sweep_pending = true;
        tracing::info!(
            "events were lost: recounted the processes of {} cgroups",
            counts.len()
        );
        true
    }

    /// Drops table entries whose exit may have been lost, once the pipeline
    /// has caught up with the kernel: while it still works through a
    /// backlog (a frozen or starved agent), the events ahead refer to
    /// processes that are gone by now, and need their entries.
    pub fn sweep_if_caught_up(&mut self, now: u64) {
        if self.sweep_pending && now.saturating_sub(self.last_event_ns) < CAUGHT_UP_NS {
            self.sweep_pending = false;
            let swept = self.table.sweep();
            tracing::debug!("dropped {swept} stale process-table entries");
        }
    }

    /// Whether an action is under way.
    pub fn acting(&self) -> bool {
        !self.active.is_empty()
    }

    /// Tags `root`'s subtree with `tag`, in the kernel and in `tagged`. Each member's
    /// "since" is taken after its kernel tag is in place: a child born later
    /// got the tag from the fork probe.
    fn follow(&mut self, root: NodeId, tag: u64) {
        let members = unprotected_members(self.table.lineage(), &self.protection, root);
        self.tagged.insert(root, (tag, WallClock::boot_ns_now()));
        for m in members {
            // A member the kernel cannot tag any more is dying (a zombie,
            // killed by the fork probe, say): it is followed all the same,
            // so that its exit is not taken for a crash.
            if let Some(system) = &self.system {
                system.tag(m.tgid, m.born_ns, tag);
            }
            if let Some(node) = self.table.get(m.tgid).map(|p| p.node) {
                self.tagged.insert(node, (tag, WallClock::boot_ns_now()));
            }
        }
    }

    /// A child born to a tagged subtree joins it.
    fn follow_birth(&mut self, child: NodeId, tgid: u32, born_ns: u64) {
        let lineage = self.table.lineage();
        let Some(parent) = lineage.get(child).and_then(|n| n.parent) else {
            return;
        };
        let Some(&(tag, since)) = self.tagged.get(&parent) else {
            return;
        };
        if lineage
            .get(child)
            .is_some_and(|n| self.protection.why(n).is_some())
        {
            return;
        }
        if born_ns > since {
            // The fork probe passed the tag on: nothing to do in the kernel.
            self.tagged.insert(child, (tag, born_ns));
            return;
        }
        self.tagged.insert(child, (tag, WallClock::boot_ns_now()));
        if let Some(system) = &self.system {
            system.tag(tgid, born_ns, tag);
        }
    }

    /// A tagged process that became protected (exec'd into a protected
    /// program, moved out of scope or into a protected cgroup) loses its
    /// tag, in the kernel too: the fork probe knows nothing of protection.
    fn untag_if_protected(&mut self, node: NodeId, tgid: u32) {
        let protected = self
            .table
            .lineage()
            .get(node)
            .is_some_and(|n| self.protection.why(n).is_some());
        if protected {
            self.tagged.remove(&node);
            if let Some(system) = &self.system {
                system.untag(tgid);
            }
        }
    }

    /// Tags the suspected subtree of every armed cgroup ahead of an alert,
    /// and forgets the watch once nothing is armed or acted on.
    fn watch_armed(&mut self) {
        if self.settings.fork_action == ActionKind::Log
            || self.settings.dry_run
            || self.settings.kernel_tags
        {
            return;
        }
        let armed = self.detectors.fork.armed_populations();
        if armed.is_empty() && self.active.is_empty() && !self.watched.is_empty() {
            // Quiet again: the kernel's budgets (and a condemnation one of
            // them made, if the agent's own rule never followed) end too.
            if let Some(system) = &self.system {
                for &tag in &self.watched {
                    system.unbudget(tag);
                    system.release(tag);
                }
            }
            self.watched.clear();
            self.tagged.clear();
            return;
        }
        for (_, recent) in armed {
            let protection = &self.protection;
            let Some(suspect) = find_offender(self.table.lineage(), &recent, |n| protection.why(n))
            else {
                continue;
            };
            if self.watched.insert(suspect.node) {
                tracing::debug!(
                    "watching the subtree of {} (tag {})",
                    suspect.tgid,
                    suspect.node
                );
                self.follow(suspect.node, suspect.node);
                self.budget(suspect.node);
            }
        }
    }

    /// Has the fork probe apply the explosion rule to a watched subtree, so
    /// that it is condemned the moment the rule is met even when the agent
    /// is not running then (measured: under a bash bomb the agent's thread
    /// can go 100–300 ms without the CPU).
    fn budget(&self, tag: NodeId) {
        let Some(system) = &self.system else {
            return;
        };
        let live = self.tagged.values().filter(|(t, _)| *t == tag).count() as u64;
        let limits = BudgetLimits::new(&self.detectors.fork.rules(), self.settings.fork_action);
        system.budget(tag, live, limits);
    }

    /// The detector's key for a process: its pids-hierarchy cgroup, when it
    /// is in scope and not protected as a kernel thread.
    fn population_key(
        &self,
        cgroups: &crate::cgroup::CgroupSet,
        kernel_thread: bool,
    ) -> Option<CgroupKey> {
        if kernel_thread || !self.scope.contains_cgroups(cgroups) {
            return None;
        }
        cgroups.get(self.pids_index).cloned().flatten()
    }

    /// Counts the processes already alive at start.
    pub fn seed_detector(&mut self, now: u64) {
        let keys: Vec<CgroupKey> = self
            .table
            .processes()
            .filter_map(|p| self.population_key(&p.cgroups, p.kernel_thread))
            .collect();
        for key in keys {
            self.exempt_cgroup_if_ignored(&key);
            self.detectors.fork.present(now, &key);
        }
    }

    /// Cgroups exempted in the fork probe before it attached.
    pub fn exempted(&mut self, dirs: &[String]) {
        self.exempt_cgroups
            .extend(dirs.iter().map(|d| Arc::from(d.as_str())));
    }

    /// Whether the fork probe judges by itself, with ignore rules to honour.
    fn exempts(&self) -> bool {
        self.settings.kernel_tags && !self.settings.ignore_fork.is_empty()
    }

    /// A cgroup the fork detector ignores is one the fork probe leaves
    /// alone too.
    fn exempt_cgroup_if_ignored(&mut self, dir: &Arc<str>) {
        if self.exempts()
            && !self.exempt_cgroups.contains(dir)
            && self.settings.ignore_fork.cgroup(Some(dir))
            && let Some(system) = &self.system
        {
            system.exempt_cgroup(dir);
            self.exempt_cgroups.insert(dir.clone());
        }
    }

    /// Keeps the fork probe's exemptions in step with the process: an
    /// ignored program from its exec to its exit, an ignored cgroup from
    /// the first process seen in it.
    fn track_exemptions(&mut self, event: &Event, p: &crate::proctable::ProcInfo) {
        if !self.exempts() {
            return;
        }
        match event {
            Event::Exec(_) => {
                let exe = self.table.lineage().get(p.node).and_then(|n| n.exe.clone());
                let ignored = self.settings.ignore_fork.program(exe.as_deref());
                if ignored != self.exempt_pids.contains(&p.tgid)
                    && let Some(system) = &self.system
                {
                    system.exempt_pid(p.tgid, ignored);
                    if ignored {
                        self.exempt_pids.insert(p.tgid);
                    } else {
                        self.exempt_pids.remove(&p.tgid);
                    }
                }
            }
            Event::Exit(e) if e.group_dead => {
                if self.exempt_pids.remove(&p.tgid)
                    && let Some(system) = &self.system
                {
                    system.exempt_pid(p.tgid, false);
                }
            }
            Event::Fork(_) | Event::CgroupAttach(_) => {
                if let Some(dir) = p.cgroups.get(self.pids_index).cloned().flatten() {
                    self.exempt_cgroup_if_ignored(&dir);
                }
            }
            _ => {}
        }
    }

    /// Applies one event to the table and the detector, and shows it when it
    /// passes the filters.
    pub fn handle(&mut self, event: &Event) -> io::Result<()> {
        let kind = event.kind();
        self.last_event_ns = self.last_event_ns.max(event.boot_ns());
        self.counters.seen[kind as usize] += 1;
        let moved_from = match event {
            Event::CgroupAttach(a) => self
                .table
                .get(a.tgid)
                .and_then(|p| self.population_key(&p.cgroups, p.kernel_thread)),
            _ => None,
        };
        // The command of a process about to be removed, for the crash-loop
        // rule.
        let (exe, args) = match event {
            Event::Exit(e) if e.group_dead => self
                .table
                .get(e.tgid)
                .and_then(|p| self.table.lineage().get(p.node))
                .map_or((None, None), |n| (n.exe.clone(), n.cmdline.clone())),
            _ => (None, None),
        };
        let subject = self.table.apply(event);
        if let (Event::Exit(e), Some(p)) = (event, &subject)
            && e.group_dead
            && self.settings.runs(Detector::Crashloop)
            && !p.kernel_thread
            && self.scope.contains_cgroups(&p.cgroups)
            // A member of a subtree guard watches or acts on dies of guard's
            // own signal (or is about to): not a crash.
            && !self.tagged.contains_key(&p.node)
        {
            let exit = ExitInfo {
                key: LoopKey {
                    program: exe.unwrap_or_else(|| Arc::from(e.comm.to_string().as_str())),
                    args,
                    cgroup: p.cgroup(self.primary).cloned(),
                    supervisor: e.ppid,
                },
                pid: e.tgid,
                status: e.status,
                lifetime_ns: (p.start_boot_ns > 0)
                    .then(|| e.boot_ns.saturating_sub(p.start_boot_ns)),
                oom_killed: self.oom_victims.remove(&e.tgid),
            };
            if let Some(crash_loop) = self.detectors.crashloop.exit(e.boot_ns, exit) {
                self.crash_loop_alert(&crash_loop)?;
            }
        }
        if let Some(p) = &subject {
            self.track_exemptions(event, p);
        }
        if let Event::Condemned(c) = event {
            self.kernel_condemned(c)?;
        }
        if let Event::OomKill(k) = event {
            if self.oom_victims.len() >= OOM_VICTIMS_KEPT {
                // Exits lost: forget the oldest guesses wholesale.
                self.oom_victims.clear();
            }
            self.oom_victims.insert(k.pid);
        }
        if let Event::Exit(e) = event
            && e.group_dead
        {
            // Out of scope, or a kernel thread: no crash to judge.
            self.oom_victims.remove(&e.tgid);
        }
        self.track_memory(event, subject.as_ref());
        if let Some(p) = &subject {
            let key = self.population_key(&p.cgroups, p.kernel_thread);
            let now = event.boot_ns();
            if let Event::Fork(f) = event
                && !f.is_thread()
                && !self.tagged.is_empty()
            {
                self.follow_birth(p.node, p.tgid, p.start_boot_ns);
            }
            // An exec (new comm) or a move (out of scope, into a protected
            // cgroup) can make a tagged process protected.
            if matches!(event, Event::Exec(_) | Event::CgroupAttach(_))
                && self.tagged.contains_key(&p.node)
            {
                self.untag_if_protected(p.node, p.tgid);
            }
            match (event, key) {
                // Threads are tasks, as pids.max counts them: births and
                // exits of the population (a thread's depth runs along the
                // threads that started threads).
                (Event::Fork(f), Some(key)) => {
                    let process = self.table.lineage().get(p.node).map_or(0, |n| n.depth);
                    let depth = if f.is_thread() {
                        let creator = self.thread_depth.get(&f.parent_pid).copied();
                        let depth = creator.unwrap_or(process) + 1;
                        if self.thread_depth.len() >= THREADS_KEPT {
                            self.thread_depth.clear();
                        }
                        self.thread_depth.insert(f.child_pid, depth);
                        depth
                    } else {
                        process
                    };
                    self.detectors.fork.birth(now, &key, p.node, depth)
                }
                (Event::Exit(e), Some(key)) => {
                    self.thread_depth.remove(&e.pid);
                    self.detectors.fork.gone(now, &key)
                }
                (Event::CgroupAttach(_), key) if key != moved_from => {
                    if let Some(old) = &moved_from {
                        self.detectors.fork.gone(now, old);
                    }
                    if let Some(new) = &key {
                        self.detectors.fork.present(now, new);
                    }
                }
                _ => {}
            }
        }
        if let Event::Unblocked(u) = event
            && !self.detectors.blocked.unblocked(u.pid, u.since_ns)
        {
            // Already reported released from a snapshot.
            return Ok(());
        }
        let s = &self.settings;
        if !s.events.contains(kind)
            || (event.is_thread_level() && !s.threads)
            || !self.scope.contains(subject.as_ref())
        {
            return Ok(());
        }
        let ppid = match event {
            Event::Fork(f) => Some(f.child_ppid),
            Event::Exit(e) => Some(e.ppid),
            _ => subject.as_ref().map(|p| p.ppid),
        };
        let ctx = Context {
            comm: subject.as_ref().map(|p| p.comm),
            ppid,
            parent_comm: ppid.and_then(|p| self.table.get(p)).map(|p| p.comm),
            cgroup: subject
                .as_ref()
                .and_then(|p| p.cgroup(self.primary))
                .map(|s| &**s),
            age_ns: match (event, &subject) {
                (Event::Exit(e), Some(p)) if p.start_boot_ns > 0 => {
                    Some(e.boot_ns.saturating_sub(p.start_boot_ns))
                }
                _ => None,
            },
            memory_cgroup: match (event, self.mem_index) {
                (Event::OomKill(_), Some(index)) => {
                    subject.as_ref().and_then(|p| p.cgroup(index)).map(|c| &**c)
                }
                _ => None,
            },
            lead_ns: match event {
                Event::HungTask(h) => self
                    .detectors
                    .blocked
                    .reported_at(h.pid)
                    .map(|at| h.boot_ns.saturating_sub(at)),
                _ => None,
            },
        };
        self.counters.shown += 1;
        self.out.event(event, &ctx)
    }

    /// The memory pool a process's memory cgroup counts against.
    fn pool_of(&mut self, cgroups: &crate::cgroup::CgroupSet) -> Option<PoolKey> {
        let index = self.mem_index?;
        let dir = cgroups.get(index).cloned().flatten()?;
        if let Some(pool) = self.pool_of_dir.get(&dir) {
            return pool.clone();
        }
        let mount = self.table.hierarchies().list.get(index)?.mount.clone();
        let mut at = std::path::PathBuf::from(&*dir);
        let pool = loop {
            if observe::memory_limit(&at.to_string_lossy()).is_some() {
                break Some(PoolKey::from(at.to_string_lossy().as_ref()));
            }
            if at == mount || !at.pop() {
                break None;
            }
        };
        self.pool_of_dir.insert(dir, pool.clone());
        pool
    }

    /// Feeds the memory rule from `rss` records and exits; reads the pool
    /// of a process that crossed a step, at most every 20 ms.
    fn track_memory(&mut self, event: &Event, subject: Option<&crate::proctable::ProcInfo>) {
        match (event, subject) {
            (Event::Rss(r), Some(p))
                if !p.kernel_thread && self.scope.contains_cgroups(&p.cgroups) =>
            {
                let pool = self.pool_of(&p.cgroups);
                self.detectors.memory.rss(
                    r.boot_ns,
                    r.tgid,
                    p.node,
                    pool.clone(),
                    r.unreclaimable_bytes(),
                    r.previous_step.is_none_or(|step| step == 0),
                );
                let now = WallClock::boot_ns_now();
                if let Some(pool) = pool
                    && self
                        .detectors
                        .memory
                        .sampled_at(&pool)
                        .is_none_or(|at| now.saturating_sub(at) >= POOL_SAMPLE_GAP_NS)
                    && let Some(usage) = observe::memcg_usage(&pool)
                {
                    self.detectors.memory.sample(now, &pool, usage);
                }
            }
            // Every pool with processes in scope is watched, not only those
            // whose processes crossed an rss step: a server's helpers of
            // tens of MB each never do.
            (Event::Fork(f), Some(p))
                if !f.is_thread()
                    && !p.kernel_thread
                    && self.scope.contains_cgroups(&p.cgroups) =>
            {
                self.watch_pool(&p.cgroups);
            }
            (Event::CgroupAttach(_), Some(p))
                if !p.kernel_thread && self.scope.contains_cgroups(&p.cgroups) =>
            {
                self.watch_pool(&p.cgroups);
            }
            (Event::ReclaimStall(r), Some(p)) if self.scope.contains_cgroups(&p.cgroups) => {
                self.last_reclaim_stall_ns = Some(r.boot_ns);
            }
            (Event::Exit(e), _) if e.group_dead => self.detectors.memory.gone(e.tgid),
            _ => {}
        }
    }

    /// Starts sampling the pool of a process's memory cgroup, if new.
    fn watch_pool(&mut self, cgroups: &crate::cgroup::CgroupSet) {
        if let Some(pool) = self.pool_of(cgroups)
            && self.detectors.memory.sampled_at(&pool).is_none()
            && let Some(usage) = observe::memcg_usage(&pool)
        {
            self.detectors
                .memory
                .sample(WallClock::boot_ns_now(), &pool, usage);
        }
    }

    /// The processes in scope whose memory counts against `pool`.
    fn pool_members(&mut self, pool: &PoolKey) -> Vec<(u32, NodeId)> {
        let candidates: Vec<(u32, NodeId, crate::cgroup::CgroupSet)> = self
            .table
            .processes()
            .filter(|p| !p.kernel_thread && self.scope.contains_cgroups(&p.cgroups))
            .map(|p| (p.tgid, p.node, p.cgroups.clone()))
            .collect();
        candidates
            .into_iter()
            .filter(|(_, _, cgroups)| {
                &**pool == HOST || self.pool_of(cgroups).as_ref() == Some(pool)
            })
            .map(|(tgid, node, _)| (tgid, node))
            .collect()
    }

    /// While a pool grows, snapshots its members' unreclaimable bytes every
    /// [`BASELINE_EVERY_NS`], keeping two: growth is measured from the
    /// older one, 15 to 30 s back (or from the first, for a runaway that
    /// began less than that ago).
    fn keep_baseline(&mut self, now: u64, pool: &PoolKey, growing: bool) {
        let fresh = self
            .baselines
            .get(pool)
            .and_then(|b| b.back())
            .is_some_and(|(at, _)| now.saturating_sub(*at) < BASELINE_EVERY_NS);
        if let Some(b) = self.baselines.get_mut(pool) {
            b.retain(|(at, _)| now.saturating_sub(*at) <= 4 * BASELINE_EVERY_NS);
        }
        if !growing || fresh {
            return;
        }
        let bytes: HashMap<u32, u64> = self
            .pool_members(pool)
            .into_iter()
            .filter_map(|(tgid, _)| Some((tgid, observe::process_unreclaimable(tgid)?)))
            .collect();
        let kept = self.baselines.entry(pool.clone()).or_default();
        kept.push_back((now, bytes));
        while kept.len() > 2 {
            kept.pop_front();
        }
    }

    /// Judges whether the host is under memory pressure now: every task
    /// stalled on memory for [`PSI_FULL_PRESSURE`] percent of the last 10 s,
    /// or pages swapped in and refaulted both faster than
    /// [`THRASHING_PAGES_PER_SEC`] (thrashing: what was swapped out is
    /// needed again at once).
    fn host_pressure(&mut self, now: u64) {
        let psi = observe::memory_pressure();
        let swap = observe::swap_activity();
        let rates = match (self.last_swap, swap) {
            (Some((t, a, b)), Some((x, y))) if now > t => {
                let secs = (now - t) as f64 / 1e9;
                Some((
                    x.saturating_sub(a) as f64 / secs,
                    y.saturating_sub(b) as f64 / secs,
                ))
            }
            _ => None,
        };
        self.last_swap = swap.map(|(a, b)| (now, a, b));
        let stalled = psi.is_some_and(|p| p.full_avg10 >= PSI_FULL_PRESSURE);
        let thrashing = rates.is_some_and(|(swapin, refault)| {
            swapin >= THRASHING_PAGES_PER_SEC && refault >= THRASHING_PAGES_PER_SEC
        });
        self.pressure_now = (stalled || thrashing).then(|| {
            json!({
                "psi_full_avg10": psi.map(|p| p.full_avg10),
                "psi_some_avg10": psi.map(|p| p.some_avg10),
                "swapin_pages_per_sec": rates.map(|r| r.0.round()),
                "refaults_per_sec": rates.map(|r| r.1.round()),
            })
        });
        self.detectors
            .memory
            .host_pressure(now, stalled || thrashing);
    }

    /// Reads every memory pool guard knows of, and the host's.
    pub fn sample_memory(&mut self, now: u64) {
        for pool in self.detectors.memory.pools() {
            if &*pool == HOST {
                continue;
            }
            let before = self.detectors.memory.usage(&pool).map(|u| u.unreclaimable);
            match observe::memcg_usage(&pool) {
                Some(usage) => {
                    self.detectors.memory.sample(now, &pool, usage);
                    let growing = before.is_some_and(|b| usage.unreclaimable > b);
                    self.keep_baseline(now, &pool, growing);
                }
                None if !std::path::Path::new(&*pool).exists() => {
                    // Removed: forget it, and the directories that led to it.
                    self.detectors.memory.remove_pool(&pool);
                    self.baselines.remove(&pool);
                    self.pool_of_dir
                        .retain(|_, to| to.as_deref() != Some(&*pool));
                }
                None => {}
            }
        }
        self.host_pressure(now);
        if let Some(host) = observe::host_memory() {
            let key = PoolKey::from(HOST);
            let before = self.detectors.memory.usage(HOST).map(|u| u.unreclaimable);
            self.detectors.memory.sample(now, &key, host);
            // The host's baseline reads every process in scope: only when
            // the host is past half of its memory.
            let growing = before.is_some_and(|b| host.unreclaimable > b)
                && host.unreclaimable * 2 > host.limit;
            self.keep_baseline(now, &key, growing);
        }
    }

    /// Why a blocked-task storm looks like memory pressure: the host's PSI,
    /// recent reclaim stalls, pools past the headroom line.
    fn storm_pressure(&self, now: u64) -> Vec<String> {
        let mut reasons = Vec::new();
        if let Some(p) = observe::memory_pressure()
            && p.full_avg10 >= PSI_FULL_PRESSURE
        {
            reasons.push(format!(
                "memory PSI full avg10 {:.1}% (every task stalled on memory)",
                p.full_avg10
            ));
        }
        if let Some(at) = self.last_reclaim_stall_ns
            && now.saturating_sub(at) <= RECENT_RECLAIM_NS
        {
            reasons.push(format!(
                "reclaim stalls, the last {} ago",
                human_duration(now.saturating_sub(at))
            ));
        }
        for (pool, pct) in self.detectors.memory.near_limit() {
            reasons.push(format!("{pool} at {pct:.0}% of its memory limit"));
        }
        reasons
    }

    /// The memory runaway a storm under pressure is blamed on, as an
    /// action of the memory detector's policy.
    fn storm_runaway(&mut self, now: u64) -> Option<ActionRequest> {
        let (pool, usage, growers) = self.detectors.memory.runaway(now)?;
        let mut request = self.memory_request(
            "blocked",
            "blocked_storm",
            &pool,
            usage.unreclaimable,
            &growers,
        )?;
        if let Some(o) = request.offender.as_object_mut() {
            o.insert("memory_cgroup".into(), json!(&*pool));
        }
        Some(request)
    }

    /// Queues an action on one process (a memory offender, a crash loop's
    /// supervisor) for the next `check`, or prints it under --dry-run; once
    /// per offender at a time. Only that process is tagged (and what it
    /// forks from now on), not its subtree.
    fn queue(&mut self, request: ActionRequest) -> io::Result<()> {
        if request.kind == ActionKind::Log || self.active.contains(&request.tag) {
            return Ok(());
        }
        if self.settings.dry_run {
            return self.dry_run(&request);
        }
        self.active.insert(request.tag);
        self.pending.push(request);
        Ok(())
    }

    /// The first alive, unprotected process among a pool's growers, as an
    /// action of the memory detector's policy.
    fn memory_request(
        &mut self,
        detector: &'static str,
        rule: &'static str,
        pool: &PoolKey,
        usage: u64,
        growers: &[Grower],
    ) -> Option<ActionRequest> {
        if !self.settings.runs(Detector::Memory) {
            return None;
        }
        if let Some(request) = self.subtree_request(detector, rule, pool, usage) {
            return Some(request);
        }
        // No member readable now (all gone meanwhile): the processes the
        // rss records saw grow.
        let lineage = self.table.lineage();
        let ignore = &self.settings.ignore_memory;
        let (g, node) = growers.iter().find_map(|g| {
            let n = lineage.get(g.node)?;
            let cgroup = n.cgroups.get(self.primary).cloned().flatten();
            let spared = self.protection.why(n).is_some()
                || ignore.matches(n.exe.as_deref(), cgroup.as_deref());
            (n.alive && !spared).then_some((g, n))
        })?;
        let mut described = self.describe_offender(g.node, 1);
        if let Some(o) = described.as_object_mut() {
            o.remove("subtree_size");
            o.insert("growth_bytes".into(), json!(g.growth));
            o.insert("resident_bytes".into(), json!(g.resident));
        }
        Some(ActionRequest {
            detector,
            rule,
            tag: g.node,
            root: Some(g.node),
            kind: self.settings.mem_action,
            offender: described,
            members: vec![Member {
                tgid: g.tgid,
                born_ns: node.born_ns,
            }],
            pool: Some((pool.clone(), usage)),
            follow_ups: 0,
        })
    }

    /// The subtree whose members' growth explains the pool's (see
    /// `detect::subtree`), as an action on all of it.
    fn subtree_request(
        &mut self,
        detector: &'static str,
        rule: &'static str,
        pool: &PoolKey,
        usage: u64,
    ) -> Option<ActionRequest> {
        let before: HashMap<u32, u64> = self
            .baselines
            .get(pool)
            .and_then(|b| b.front())
            .map(|(_, bytes)| bytes.clone())
            .unwrap_or_default();
        let readings: Vec<subtree::Member> = self
            .pool_members(pool)
            .into_iter()
            .filter_map(|(tgid, node)| {
                Some(subtree::Member {
                    node,
                    now: observe::process_unreclaimable(tgid)?,
                    before: before.get(&tgid).copied(),
                })
            })
            .collect();
        let lineage = self.table.lineage();
        let spared = |n: &crate::proctable::LineageNode| {
            let cgroup = n.cgroups.get(self.primary).cloned().flatten();
            self.protection.why(n).or_else(|| {
                self.settings
                    .ignore_memory
                    .matches(n.exe.as_deref(), cgroup.as_deref())
                    .then_some("ignored")
            })
        };
        let o = subtree::offender(lineage, &readings, spared)?;
        let members: Vec<Member> = unprotected_members(lineage, &self.protection, o.node)
            .into_iter()
            .filter(|m| {
                self.table
                    .get(m.tgid)
                    .and_then(|p| lineage.get(p.node))
                    .is_none_or(|n| spared(n).is_none())
            })
            .collect();
        if members.is_empty() {
            return None;
        }
        let mut described = self.describe_offender(o.node, members.len());
        if let Some(d) = described.as_object_mut() {
            d.insert("growth_bytes".into(), json!(o.growth));
            d.insert("resident_bytes".into(), json!(o.resident));
            d.insert(
                "share_of_growth".into(),
                json!((o.share * 100.0).round() / 100.0),
            );
            d.insert(
                "baseline_secs".into(),
                json!(
                    self.baselines
                        .get(pool)
                        .and_then(|b| b.front())
                        .map(
                            |(at, _)| (WallClock::boot_ns_now().saturating_sub(*at) / 1_000_000)
                                as f64
                                / 1e3
                        )
                ),
            );
        }
        Some(ActionRequest {
            detector,
            rule,
            tag: o.node,
            root: Some(o.node),
            kind: self.settings.mem_action,
            offender: described,
            members,
            pool: Some((pool.clone(), usage)),
            follow_ups: 0,
        })
    }

    /// Writes a memory alert and queues the action it leads to.
    fn memory_alert(&mut self, v: &MemoryVerdict) -> io::Result<()> {
        // Host pressure may come from outside the scope: only a host-wide
        // guard acts on it, and only on a subtree that grew by a sixteenth
        // of the host's memory.
        let pressure_only = v.rule == MemoryRule::Pressure && !self.scope.cgroups.is_empty();
        let request = self
            .memory_request(
                "memory",
                v.rule.name(),
                &v.pool,
                v.usage.unreclaimable,
                &v.growers,
            )
            .filter(|r| {
                v.rule != MemoryRule::Pressure
                    || (!pressure_only
                        && r.offender["growth_bytes"]
                            .as_u64()
                            .is_some_and(|g| g >= v.usage.limit / 16))
            });
        let limit = v.usage.limit.max(1);
        let mut fields = vec![
            ("detector", json!("memory")),
            ("rule", json!(v.rule.name())),
            ("cgroup", json!(&*v.pool)),
            ("usage_bytes", json!(v.usage.unreclaimable)),
            ("charged_bytes", json!(v.usage.usage)),
            ("limit_bytes", json!(v.usage.limit)),
            (
                "percent",
                json!((v.usage.unreclaimable as f64 * 1000.0 / limit as f64).round() / 10.0),
            ),
            (
                "mib_per_sec",
                json!((v.bytes_per_sec / f64::from(1 << 20) * 10.0).round() / 10.0),
            ),
            (
                "eta_secs",
                json!(v.eta_ns.map(|e| (e as f64 / 1e8).round() / 10.0)),
            ),
        ];
        if v.rule == MemoryRule::Pressure {
            fields.push(("pressure", self.pressure_now.clone().unwrap_or(Value::Null)));
        }
        let Some(request) = request else {
            fields.push(("offender", Value::Null));
            fields.push((
                "note",
                json!(if pressure_only {
                    "the host is under memory pressure; with --cgroup, guard does not act on it (the cause may be outside the scope)"
                } else {
                    "no unprotected process grew enough in this pool"
                }),
            ));
            return self.out.record("alert", &fields);
        };
        fields.push(("offender", request.offender.clone()));
        fields.push(("action", json!(request.kind)));
        self.out.record("alert", &fields)?;
        self.queue(request)
    }

    /// Feeds the trend rule: pids.current and pids.max of every populated
    /// cgroup with a limit, and the host's task count.
    pub fn sample_pids(&mut self, now: u64) {
        for key in self.detectors.fork.populated() {
            let Some((current, limit)) = observe::cgroup_pids(&key) else {
                continue;
            };
            self.detectors.leak.sample(now, &key, current, limit);
            if limit.is_some() {
                self.detectors.fork.pids_sample(now, &key, current, limit);
            }
        }
        if let Some((total, limit)) = observe::host_pids() {
            self.detectors
                .fork
                .pids_sample(now, &Arc::from(HOST), total, Some(limit));
        }
    }

    /// Feeds the blocked-task rule the kernel's `BLOCKED` map as read now:
    /// reports tasks past the threshold (with where they wait), releases,
    /// and storms. Returns what the kernel's maps need.
    pub fn sample_blocked(
        &mut self,
        now: u64,
        tasks: &[BlockedTask],
    ) -> io::Result<BlockedBookkeeping> {
        if !self.settings.runs(Detector::Blocked) {
            return Ok(BlockedBookkeeping::default());
        }
        let ignore = &self.settings.ignore_blocked;
        let in_scope: Vec<BlockedTask> = tasks
            .iter()
            .filter(|t| {
                let process = self.table.get(t.tgid);
                let program = process
                    .and_then(|p| self.table.lineage().get(p.node))
                    .and_then(|n| n.exe.clone());
                let cgroup = process.and_then(|p| p.cgroup(self.primary));
                self.scope.contains(process)
                    && !ignore.matches(program.as_deref(), cgroup.map(|c| &**c))
            })
            .cloned()
            .collect();
        let changes = self.detectors.blocked.snapshot(now, &in_scope);
        let mut book = BlockedBookkeeping::default();
        for task in &changes.crossed {
            let wait = observe::task_wait(task.tgid, task.pid);
            let process = self.table.get(task.tgid);
            self.out.record(
                "blocked",
                &[
                    ("pid", json!(task.pid)),
                    ("tgid", json!(task.tgid)),
                    ("comm", json!(task.comm.to_string())),
                    (
                        "cgroup",
                        json!(process.and_then(|p| p.cgroup(self.primary)).map(|c| &**c)),
                    ),
                    (
                        "kernel_thread",
                        json!(process.is_some_and(|p| p.kernel_thread)),
                    ),
                    ("since_ns", json!(task.since_ns)),
                    (
                        "blocked_ms",
                        json!(now.saturating_sub(task.since_ns) / 1_000_000),
                    ),
                    ("killable", json!(task.killable)),
                    ("wchan", json!(wait.wchan)),
                    ("stack", json!(wait.frames)),
                ],
            )?;
            self.detectors.blocked.report(now, task, wait);
            book.watch.push((task.task, task.since_ns));
        }
        for released in &changes.released {
            self.out.record(
                "unblocked",
                &[
                    ("pid", json!(released.pid)),
                    ("since_ns", json!(released.since_ns)),
                    ("blocked_ms", json!(released.blocked_ns / 1_000_000)),
                    ("killable", json!(released.killable)),
                    ("approximate", json!(true)),
                ],
            )?;
            book.forget.push(released.task);
        }
        match self.detectors.blocked.check(now) {
            Some(BlockedVerdict::Storm {
                count,
                killable,
                pids,
                shared,
                longest_ns,
            }) => {
                let pressure = self.storm_pressure(now);
                let runaway = if pressure.is_empty() {
                    None
                } else {
                    self.storm_runaway(now)
                };
                let note = match (&runaway, pressure.is_empty()) {
                    (_, true) => {
                        "tasks in D state cannot be killed: guard reports the storm and acts on nothing"
                    }
                    (Some(_), false) => {
                        "the storm comes with memory pressure: its offender is the memory runaway, \
                         and --mem-action applies to it (tasks in D state cannot be killed)"
                    }
                    (None, false) => {
                        "the storm comes with memory pressure, but no unprotected process grew \
                         in scope (tasks in D state cannot be killed)"
                    }
                };
                let psi = observe::memory_pressure();
                let mut fields = vec![
                    ("detector", json!("blocked")),
                    ("rule", json!("blocked_storm")),
                    ("count", json!(count)),
                    ("killable", json!(killable)),
                    (
                        "threshold_secs",
                        json!(self.detectors.blocked.rules().threshold_ns as f64 / 1e9),
                    ),
                    ("longest_ms", json!(longest_ns / 1_000_000)),
                    (
                        "shared_wait",
                        json!(shared.as_ref().map(|s| json!({
                            "frames": s.frames,
                            "tasks": s.tasks,
                        }))),
                    ),
                    (
                        "memory_pressure",
                        json!({
                            "psi": psi.map(|p| json!({
                                "some_avg10": p.some_avg10,
                                "full_avg10": p.full_avg10,
                            })),
                            "reasons": pressure,
                        }),
                    ),
                    ("pids", json!(pids)),
                ];
                match runaway {
                    Some(request) => {
                        fields.push(("offender", request.offender.clone()));
                        fields.push(("action", json!(request.kind)));
                        fields.push(("note", json!(note)));
                        self.out.record("alert", &fields)?;
                        self.queue(request)?;
                    }
                    None => {
                        fields.push(("offender", Value::Null));
                        fields.push(("action", json!("log")));
                        fields.push(("note", json!(note)));
                        self.out.record("alert", &fields)?;
                    }
                }
            }
            Some(BlockedVerdict::StormOver { peak, lasted_ns }) => {
                self.out.record(
                    "resolved",
                    &[
                        ("detector", json!("blocked")),
                        ("rule", json!("blocked_storm")),
                        ("peak", json!(peak)),
                        ("lasted_ms", json!(lasted_ns / 1_000_000)),
                    ],
                )?;
            }
            None => {}
        }
        self.out.flush()?;
        Ok(book)
    }

    /// Evaluates the detectors; writes alerts; returns the actions to run.
    pub fn check(&mut self, now: u64) -> io::Result<Vec<ActionRequest>> {
        self.watch_armed();
        self.detectors.crashloop.prune(now);
        let mut requests = Vec::new();
        let mut verdicts = self.detectors.fork.check(now);
        if !self.settings.runs(Detector::Fork) {
            verdicts.clear();
        }
        // An explosion judged on counts that lost events may have inflated
        // is no verdict: recount, and judge again from there.
        let recounted = verdicts
            .iter()
            .any(|v| matches!(v, ForkVerdict::Explosion { .. }))
            && self.recount_after_losses(now);
        for verdict in verdicts {
            if recounted && matches!(verdict, ForkVerdict::Explosion { .. }) {
                continue;
            }
            let (rule, cgroup, recent, mut figures) = match &verdict {
                ForkVerdict::Explosion {
                    cgroup,
                    births,
                    births_per_sec,
                    growth,
                    deep_births,
                    live,
                    window_ns,
                    recent,
                } => (
                    "explosion",
                    cgroup.clone(),
                    recent.clone(),
                    vec![
                        ("births", json!(births)),
                        ("births_per_sec", json!(births_per_sec.round())),
                        ("growth", json!(growth)),
                        ("deep_births", json!(deep_births)),
                        ("live", json!(live)),
                        ("window_ms", json!(window_ns / 1_000_000)),
                    ],
                ),
                ForkVerdict::LimitTrend {
                    cgroup,
                    current,
                    limit,
                    per_sec,
                    eta_ns,
                    recent,
                } => (
                    "pids_limit_trend",
                    cgroup.clone(),
                    recent.clone(),
                    vec![
                        ("current", json!(current)),
                        ("limit", json!(limit)),
                        ("per_sec", json!((per_sec * 100.0).round() / 100.0)),
                        ("eta_secs", json!((*eta_ns as f64 / 1e8).round() / 10.0)),
                        ("eta", json!(human_duration(*eta_ns))),
                    ],
                ),
            };
            if self.settings.ignore_fork.cgroup(Some(&cgroup)) {
                continue;
            }
            let lineage = self.table.lineage();
            let protection = &self.protection;
            let ignore = &self.settings.ignore_fork;
            let offender = find_offender(lineage, &recent, |n| {
                protection
                    .why(n)
                    .or_else(|| ignore.program(n.exe.as_deref()).then_some("ignored"))
            });
            let mut fields = vec![
                ("detector", json!("fork")),
                ("rule", json!(rule)),
                ("cgroup", json!(&*cgroup)),
            ];
            fields.append(&mut figures);
            let Some(offender) = offender else {
                fields.push(("offender", Value::Null));
                fields.push(("note", json!("no unprotected process behind the growth")));
                self.out.record("alert", &fields)?;
                continue;
            };
            if self.acting_on(offender.node) {
                // Condemned by the fork probe already, and being contained.
                continue;
            }
            let members = unprotected_members(lineage, protection, offender.node);
            let described = self.describe_offender(offender.node, members.len());
            // The subtree may carry the fork probe's own tag already: act
            // under it, so that the probe's budget and condemnation and the
            // agent's signals are one; and say so when the probe condemned
            // it first (its record may still be on its way).
            let probe_tag = self.probe_tag_of(offender.tgid, &members);
            if let (Some(t), Some(system)) = (probe_tag, &self.system)
                && system.is_condemned(t)
            {
                fields.push(("condemned_by_kernel", json!(true)));
            }
            fields.push(("offender", described.clone()));
            fields.push(("action", json!(self.settings.fork_action)));
            self.out.record("alert", &fields)?;
            if self.settings.fork_action == ActionKind::Log || self.active.contains(&offender.node)
            {
                continue;
            }
            let tag = probe_tag.unwrap_or(offender.node);
            let request = ActionRequest {
                detector: "fork",
                rule,
                tag,
                root: Some(offender.node),
                kind: self.settings.fork_action,
                offender: described,
                members,
                pool: None,
                follow_ups: 0,
            };
            if self.settings.dry_run {
                self.dry_run(&request)?;
            } else {
                self.active.insert(request.tag);
                self.follow(offender.node, request.tag);
                requests.push(request);
            }
        }
        for verdict in self.detectors.leak.check(now) {
            if self.settings.runs(Detector::Leak)
                && !self.settings.ignore_leak.cgroup(Some(&verdict.cgroup))
            {
                self.leak_alert(&verdict)?;
            }
        }
        for verdict in self.detectors.memory.check(now) {
            if self.settings.runs(Detector::Memory)
                && !self.settings.ignore_memory.cgroup(Some(&verdict.pool))
            {
                self.memory_alert(&verdict)?;
            }
        }
        requests.append(&mut self.pending);
        self.out.flush()?;
        Ok(requests)
    }

    /// Writes a leak alert, with its projection toward whichever limit
    /// comes first, and queues the action it leads to.
    fn leak_alert(&mut self, v: &crate::detect::leak::LeakVerdict) -> io::Result<()> {
        let recent = self.detectors.fork.recent(&v.cgroup);
        let ignore = &self.settings.ignore_leak;
        let protection = &self.protection;
        let offender = find_offender(self.table.lineage(), &recent, |n| {
            protection
                .why(n)
                .or_else(|| ignore.program(n.exe.as_deref()).then_some("ignored"))
        });
        let per_sec = v.per_min / 60.0;
        let pids_eta = v
            .limit
            .filter(|_| per_sec > 0.0)
            .map(|limit| limit.saturating_sub(v.now) as f64 / per_sec);
        // Memory: the pool the leaking processes count against, at the
        // memory each task holds now.
        let pool = offender
            .as_ref()
            .and_then(|o| self.table.lineage().get(o.node))
            .map(|n| n.cgroups.clone());
        let pool = match pool {
            Some(cgroups) => self
                .pool_of(&cgroups)
                .unwrap_or_else(|| PoolKey::from(HOST)),
            None => PoolKey::from(HOST),
        };
        let memory = if &*pool == HOST {
            observe::host_memory()
        } else {
            observe::memcg_usage(&pool)
        };
        let memory_eta = memory.filter(|_| v.now > 0 && per_sec > 0.0).map(|m| {
            let per_task = m.unreclaimable as f64 / v.now as f64;
            m.limit.saturating_sub(m.unreclaimable) as f64 / (per_task * per_sec).max(1.0)
        });
        let first = match (pids_eta, memory_eta) {
            (Some(p), Some(m)) => Some(if p <= m { "pids" } else { "memory" }),
            (Some(_), None) => Some("pids"),
            (None, Some(_)) => Some("memory"),
            (None, None) => None,
        };
        let round = |s: Option<f64>| s.map(|s| (s * 10.0).round() / 10.0);
        let mut fields = vec![
            ("detector", json!("leak")),
            ("rule", json!("leak")),
            ("cgroup", json!(&*v.cgroup)),
            ("tasks_now", json!(v.now)),
            ("tasks_before", json!(v.before)),
            ("window_secs", json!(v.window_ns / 1_000_000_000)),
            ("per_min", json!((v.per_min * 10.0).round() / 10.0)),
            ("pids_limit", json!(v.limit)),
            ("pids_eta_secs", json!(round(pids_eta))),
            ("memory_pool", json!(&*pool)),
            ("memory_bytes", json!(memory.map(|m| m.unreclaimable))),
            ("memory_limit_bytes", json!(memory.map(|m| m.limit))),
            ("memory_eta_secs", json!(round(memory_eta))),
            ("runs_out_first", json!(first)),
        ];
        let Some(offender) = offender else {
            fields.push(("offender", Value::Null));
            return self.out.record("alert", &fields);
        };
        let members = unprotected_members(self.table.lineage(), &self.protection, offender.node);
        let described = self.describe_offender(offender.node, members.len());
        fields.push(("offender", described.clone()));
        fields.push(("action", json!(self.settings.leak_action)));
        self.out.record("alert", &fields)?;
        if self.settings.leak_action == ActionKind::Log || members.is_empty() {
            return Ok(());
        }
        self.queue(ActionRequest {
            detector: "leak",
            rule: "leak",
            tag: offender.node,
            root: Some(offender.node),
            kind: self.settings.leak_action,
            offender: described,
            members,
            pool: None,
            follow_ups: 0,
        })
    }

    /// The tag the fork probe gave the subtree rooted at `root_tgid`, found
    /// on the root or one of its first members.
    fn probe_tag_of(&self, root_tgid: u32, members: &[Member]) -> Option<u64> {
        let system = self.system.as_ref()?;
        if !self.settings.kernel_tags {
            return None;
        }
        std::iter::once(root_tgid)
            .chain(members.iter().take(8).map(|m| m.tgid))
            .filter_map(|tgid| system.tag_of(tgid))
            .find(|&tag| guard_common::auto_tag_root(tag) == Some(root_tgid))
    }

    /// Whether an action is under way on `node`'s subtree (under its own
    /// tag, or one it carries).
    fn acting_on(&self, node: NodeId) -> bool {
        self.active.contains(&node)
            || self
                .tagged
                .get(&node)
                .is_some_and(|(tag, _)| self.active.contains(tag))
    }

    /// The fork probe condemned a subtree on its budget: its members that
    /// fork die (with their newborn child) from now on. Alerts, and has the
    /// agent signal the members that do not fork. The root of a subtree the
    /// probe tagged by itself is found by walking up from the member whose
    /// fork met the rule (it may have exited already: lineage keeps it).
    fn kernel_condemned(&mut self, c: &crate::decode::Condemned) -> io::Result<()> {
        if self.settings.fork_action == ActionKind::Log
            || self.settings.dry_run
            || self.active.contains(&c.tag)
        {
            return Ok(());
        }
        let lineage = self.table.lineage();
        let root = match c.root_tgid {
            None => lineage.get(c.tag).is_some().then_some(c.tag),
            Some(root_tgid) => self.table.get(c.forker_tgid).and_then(|forker| {
                let own = lineage.get(forker.node).map(|n| (forker.node, n));
                own.into_iter()
                    .chain(lineage.ancestors(forker.node))
                    .find(|(_, n)| n.tgid == root_tgid)
                    .map(|(id, _)| id)
            }),
        };
        if let Some(root) = root
            && self.acting_on(root)
        {
            return Ok(());
        }
        // An ignored subtree (tagged before its cgroup was exempted, or
        // rooted at an ignored program): the probe signals none of it (it
        // is protected there now); the condemnation ends.
        let ignored = root.and_then(|r| lineage.get(r)).is_some_and(|n| {
            let cgroup = n.cgroups.get(self.pids_index).cloned().flatten();
            self.settings
                .ignore_fork
                .matches(n.exe.as_deref(), cgroup.as_deref())
        });
        if ignored {
            if let Some(system) = &self.system {
                system.release(c.tag);
                system.unbudget(c.tag);
            }
            tracing::info!(
                "the fork probe condemned subtree {}, which --ignore leaves alone",
                c.tag
            );
            return Ok(());
        }
        let members = root.map_or_else(Vec::new, |r| {
            unprotected_members(lineage, &self.protection, r)
        });
        let offender = match root {
            Some(r) => self.describe_offender(r, members.len()),
            None => json!({ "pid": c.root_tgid, "note": "gone before guard knew it" }),
        };
        let cgroup = root
            .and_then(|r| self.table.lineage().get(r))
            .and_then(|n| n.cgroups.get(self.pids_index).cloned().flatten());
        let window_s = c.window_ns as f64 / 1e9;
        self.out.record(
            "alert",
            &[
                ("detector", json!("fork")),
                ("rule", json!("explosion")),
                ("condemned_by_kernel", json!(true)),
                ("cgroup", json!(cgroup.as_deref())),
                ("births", json!(c.births)),
                (
                    "births_per_sec",
                    json!((c.births as f64 / window_s.max(1e-9)).round()),
                ),
                ("growth", json!(c.growth)),
                ("deep_births", json!(c.deep_births)),
                ("window_ms", json!(c.window_ns / 1_000_000)),
                ("offender", offender.clone()),
                ("action", json!(self.settings.fork_action)),
            ],
        )?;
        let request = ActionRequest {
            detector: "fork",
            rule: "explosion",
            tag: c.tag,
            root,
            kind: self.settings.fork_action,
            offender,
            members,
            pool: None,
            follow_ups: 0,
        };
        self.active.insert(c.tag);
        if let Some(r) = root {
            self.follow(r, c.tag);
        }
        self.pending.push(request);
        Ok(())
    }

    /// Why the supervisor of a crash loop must not be stopped; `None` when
    /// it may be (see `--crashloop-action`).
    fn supervisor_spared(&self, supervisor: u32) -> Option<&'static str> {
        let Some(p) = self.table.get(supervisor) else {
            return Some("the supervisor is unknown");
        };
        let Some(node) = self.table.lineage().get(p.node) else {
            return Some("the supervisor is unknown");
        };
        // Service managers and session daemons are protected by name (see
        // `protect::SUPERVISORS`): stopping one would stop all it runs.
        self.protection.why(node)
    }

    fn crash_loop_alert(&mut self, l: &CrashLoop) -> io::Result<()> {
        let statuses: Vec<String> = l
            .statuses
            .iter()
            .map(|s| match s {
                ExitStatus::Exited(code) => format!("exit {code}"),
                ExitStatus::Signaled { signal, .. } => {
                    crate::output::signal_name(*signal).to_owned()
                }
            })
            .collect();
        let supervisor = self.table.get(l.key.supervisor).map(|p| p.comm.to_string());
        let (action, spared) = match self.settings.crashloop_action {
            ActionKind::Log => (ActionKind::Log, None),
            kind => match self.supervisor_spared(l.key.supervisor) {
                Some(why) => (ActionKind::Log, Some(why)),
                None => (kind, None),
            },
        };
        self.out.record(
            "alert",
            &[
                ("detector", json!("crashloop")),
                ("rule", json!("crash_loop")),
                ("program", json!(&*l.key.program)),
                ("cgroup", json!(l.key.cgroup.as_deref())),
                (
                    "unit",
                    json!(l.key.cgroup.as_deref().and_then(systemd_unit)),
                ),
                (
                    "supervisor",
                    json!({"pid": l.key.supervisor, "comm": supervisor}),
                ),
                ("crashes", json!(l.crashes)),
                ("window_secs", json!(l.window_ns / 1_000_000_000)),
                ("per_minute", json!((l.per_minute * 10.0).round() / 10.0)),
                ("statuses", json!(statuses)),
                ("last_pid", json!(l.last_pid)),
                ("action", json!(action)),
                ("not_stopped_because", json!(spared)),
            ],
        )?;
        if action == ActionKind::Log {
            return Ok(());
        }
        let Some(node) = self.table.get(l.key.supervisor).map(|p| p.node) else {
            return Ok(());
        };
        let request = ActionRequest {
            detector: "crashloop",
            rule: "crash_loop",
            tag: node,
            root: Some(node),
            kind: action,
            offender: self.describe_offender(node, 1),
            members: vec![Member {
                tgid: l.key.supervisor,
                born_ns: self.table.lineage().get(node).map_or(0, |n| n.born_ns),
            }],
            pool: None,
            follow_ups: 0,
        };
        self.queue(request)
    }

    fn describe_offender(&self, node: NodeId, subtree: usize) -> Value {
        let lineage = self.table.lineage();
        let Some(n) = lineage.get(node) else {
            return Value::Null;
        };
        let mut described = json!({
            "pid": n.tgid,
            "comm": n.comm.to_string(),
            "alive": n.alive,
            // From exec records (the probe copies the arguments): reading
            // /proc/PID/cmdline here would wait on the offender's mmap_lock,
            // which a forking process holds.
            "exe": n.exe.as_deref(),
            "cmdline": n.cmdline.as_deref(),
            "cgroup": n.cgroups.get(self.primary).cloned().flatten().map(|s| s.to_string()),
            "subtree_size": subtree,
        });
        if let (Some(hex), Some(o)) = (
            crate::output::text::hex_if_not_utf8(n.comm.as_bytes()),
            described.as_object_mut(),
        ) {
            o.insert("comm_hex".into(), json!(hex));
        }
        described
    }

    fn dry_run(&mut self, request: &ActionRequest) -> io::Result<()> {
        let pids: Vec<u32> = request.members.iter().map(|m| m.tgid).collect();
        let mut fields = action_fields(request, true);
        fields.push(("members", json!(pids)));
        self.out.record("action", &fields)
    }
    /// An action finished: report it. When members of the subtree are still
    /// alive by the lineage (born before they could be tagged), request a
    /// follow-up.
    pub fn action_done(
        &mut self,
        request: &ActionRequest,
        outcome: &Outcome,
    ) -> io::Result<Vec<ActionRequest>> {
        self.active.remove(&request.tag);
        self.watched.remove(&request.tag);
        self.tagged.retain(|_, (tag, _)| *tag != request.tag);
        let signals = crate::output::signal_name(request.kind.signal());
        let mut fields = action_fields(request, false);
        fields.extend([
            ("signals", json!(signals)),
            ("members", json!(request.members.len())),
            ("outcome", json!(outcome)),
        ]);
        if let Some((pool, before)) = &request.pool {
            let after = if &**pool == HOST {
                observe::host_memory()
            } else {
                observe::memcg_usage(pool)
            };
            fields.push(("usage_before_bytes", json!(before)));
            fields.push(("usage_after_bytes", json!(after.map(|a| a.unreclaimable))));
            fields.push((
                "freed_bytes",
                json!(after.map(|a| before.saturating_sub(a.unreclaimable))),
            ));
        }
        self.out.record("action", &fields)?;
        self.out.flush()?;
        if request.detector != "fork" && request.members.len() <= 1 {
            // An action on one process (a memory hog, a crash loop's
            // supervisor) has no subtree to follow up on.
            return Ok(Vec::new());
        }
        let Some(root) = request.root else {
            // Nothing known beyond what the kernel tagged, and `contain`
            // swept that until it was empty.
            return Ok(Vec::new());
        };
        let Some(system) = &self.system else {
            return Ok(Vec::new());
        };
        let lineage = self.table.lineage();
        let mut left = unprotected_members(lineage, &self.protection, root);
        left.retain(|m| still_to_contain(request.kind, system.state(m.tgid)));
        if left.is_empty() || request.kind == ActionKind::Log {
            return Ok(Vec::new());
        }
        if request.follow_ups >= MAX_FOLLOW_UPS
            || (request.follow_ups > 0 && outcome.signalled == 0)
        {
            // Members the lineage knows that containment can no longer
            // reach (their pid names another process, or they are about to
            // die): report them once, and stop.
            tracing::warn!(
                "{} members of subtree {} are still running after {} rounds of containment; \
                 guard stops trying",
                left.len(),
                request.tag,
                request.follow_ups + 1
            );
            return Ok(Vec::new());
        }
        let follow_up = ActionRequest {
            members: left,
            follow_ups: request.follow_ups + 1,
            ..request.clone()
        };
        self.active.insert(follow_up.tag);
        self.follow(root, follow_up.tag);
        Ok(vec![follow_up])
    }

    pub fn seen_by_kind(&self) -> std::collections::BTreeMap<&'static str, u64> {
        EventKind::ALL
            .iter()
            .map(|k| (k.name(), self.counters.seen[*k as usize]))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stopped_members_are_done_for_stop_and_left_for_kill() {
        use ProcState::*;
        let left = |kind| {
            [Gone, Zombie, Stopped, Running]
                .into_iter()
                .filter(|&s| still_to_contain(kind, s))
                .collect::<Vec<_>>()
        };
        assert_eq!(left(ActionKind::Stop), vec![Running]);
        assert_eq!(left(ActionKind::Kill), vec![Stopped, Running]);
    }
}
