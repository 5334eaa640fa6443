//! The per-event stages after decode: process table (enrich) → detectors →
//! action requests → output. Owns their state; `agent` feeds it events and
//! clock ticks, runs the actions it requests (through `act`), and hands the
//! outcomes back.
//!
//! - `fork`, `memory`, `blocked`: the glue of those detectors.
//! - `leak`, `crashloop`: detectors as plugins (`plugin`: the interface).
//! - `incidents`: alerts raised on incidents; `refusal`: refusals in force.
//! - `report`: what incident reports are made of (history, subtree,
//!   outcome); `snapshot`: the `snapshot` record for `--socket`.

use std::{
    collections::{HashMap, HashSet},
    io::{self, Write},
    sync::Arc,
};

mod blocked;
pub mod crashloop;
#[cfg(test)]
pub mod fixture;
mod fork;
mod incidents;
pub use self::fork::kernel_verdict;
pub mod leak;
mod memory;
pub mod plugin;
mod refusal;
mod report;
pub use self::report::ReportBook;
mod snapshot;
#[cfg(test)]
mod tests;

use guard_common::{EventKind, KIND_SLOTS};

use self::plugin::{PidsReading, Plugin, Verdict, View};
use crate::{
    cli::KindSet,
    detect::{
        Detectors,
        blocked::{BlockedTask, BlockedVerdict},
        crashloop::{CrashLoop, ExitInfo, LoopKey, systemd_unit},
        fork::{CgroupKey, ForkVerdict, LimitRule, find_offender},
        memory::{Grower, HOST, MemoryRule, MemoryVerdict, PoolKey},
        subtree,
        switches::{Detector, Ignore},
    },
    host::clock::WallClock,
    host::observe::{Host, LiveHost},
    host::proctable::{Lineage, NodeId, ProcInfo, ProcessTable},
    host::scope::Scope,
    kernel::decode::{Event, ExitStatus},
    kernel::source::{BlockedBookkeeping, LossCounter},
    output::{
        Context, Output, human_duration,
        incident::Subject,
        record::{
            ActionDone, ActionDryRun, ActionHead, ActionRecord, Alert, Blame, Freed, HostPressure,
            Offender, Rule,
        },
    },
    respond::act::{Member, Outcome, ProcState, System},
    respond::kernel_scope::BudgetLimits,
    respond::policy::ActionKind,
    respond::protect::Protection,
};

/// What the stream shows and what verdicts lead to.
#[derive(Clone)]
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
    /// The probes drop the events of tasks outside the scope: a process
    /// that moves out is never heard of again, so the table lets it go.
    pub kernel_filter: bool,
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
    /// Per-cgroup actions (the config file's `[[policy]]`), over the above.
    pub policies: crate::respond::policy::Policies,
    /// `--prefer`: programs a memory action takes first.
    pub prefer: Vec<regex::Regex>,
    /// `--refuse-grace` and `--refuse-for`.
    pub refusal: crate::respond::refusal::RefusalRules,
    /// The kernel can refuse forks here; if not, every action that refuses
    /// is taken as [`ActionKind::without_refusal`].
    pub refusal_available: bool,
}

impl Settings {
    pub fn runs(&self, detector: Detector) -> bool {
        !self.off.contains(&detector)
    }

    /// What a verdict of `detector` in `cgroup` leads to: a policy's
    /// action for it, else the detector's own.
    pub fn action(&self, detector: Detector, cgroup: Option<&str>) -> ActionKind {
        self.action_of(detector, cgroup, &[])
    }

    /// What a verdict of `detector` in `cgroup` on a process in `cgroups`
    /// (one per hierarchy) leads to: the first policy matching the cgroup
    /// or any of the process's (on hybrid v1, a policy on its pids cgroup
    /// holds for the memory rule too), else the detector's own.
    pub fn action_of(
        &self,
        detector: Detector,
        cgroup: Option<&str>,
        cgroups: &[Option<Arc<str>>],
    ) -> ActionKind {
        let dirs: Vec<&str> = cgroup
            .into_iter()
            .chain(cgroups.iter().filter_map(|c| c.as_deref()))
            .collect();
        let action = self
            .policies
            .action_in(detector, &dirs)
            .unwrap_or(match detector {
                Detector::Fork => self.fork_action,
                Detector::Memory => self.mem_action,
                Detector::Leak => self.leak_action,
                Detector::Crashloop => self.crashloop_action,
                Detector::Blocked => ActionKind::Log,
            });
        self.effective(action)
    }

    /// `action` as it can be taken here (see `refusal_available`).
    pub fn effective(&self, action: ActionKind) -> ActionKind {
        if self.refusal_available {
            action
        } else {
            action.without_refusal()
        }
    }

    /// The strongest fork action anywhere: what the fork probe's budgets
    /// signal with, except in the cgroups whose action is softer (see
    /// `kernel_verdict`).
    pub fn strongest_fork_action(&self) -> ActionKind {
        self.effective(self.policies.strongest_fork_action(self.fork_action))
    }

    /// Every alert and action this configuration can count, so that its
    /// counters read 0 from the start instead of appearing at the first
    /// event: each running detector's rules, and each action a flag or a
    /// policy names for it with the outcomes it can have.
    pub fn countable(&self) -> Vec<crate::output::record::Counted> {
        use crate::output::record::{ActionResult, Counted, Rule};
        let mut counted: Vec<Counted> = Rule::ALL
            .into_iter()
            .filter(|rule| self.runs(rule.detector()))
            .map(|rule| Counted::Alert(rule.detector(), rule))
            .collect();
        for detector in Detector::ALL.into_iter().filter(|&d| self.runs(d)) {
            let mut actions = vec![self.action(detector, None)];
            actions.extend(
                self.policies
                    .rules()
                    .filter_map(|p| match detector {
                        Detector::Fork => p.fork_action,
                        Detector::Memory => p.mem_action,
                        Detector::Leak => p.leak_action,
                        Detector::Crashloop => p.crashloop_action,
                        Detector::Blocked => None,
                    })
                    .map(|a| self.effective(a)),
            );
            actions.sort_unstable();
            actions.dedup();
            for action in actions.into_iter().filter(|a| a.acts()) {
                let results: &[ActionResult] = if self.dry_run {
                    &[ActionResult::DryRun]
                } else if action.refuses() && action.then().is_none() {
                    &[ActionResult::Refusing]
                } else if action.refuses() {
                    &[
                        ActionResult::Refusing,
                        ActionResult::Contained,
                        ActionResult::NotContained,
                    ]
                } else {
                    &[ActionResult::Contained, ActionResult::NotContained]
                };
                counted.extend(
                    results
                        .iter()
                        .map(|&result| Counted::Action(detector, action, result)),
                );
            }
        }
        counted
    }
}

/// PSI `full` avg10 (percent) that counts as memory pressure for a storm.
const PSI_FULL_PRESSURE: f64 = 10.0;

/// Threads whose depth is remembered, at most (exits lost: forget them).
const THREADS_KEPT: usize = 65536;

/// A snapshot of a pool's members: (when, tgid → unreclaimable bytes).
type Baseline = (u64, HashMap<u32, u64>);

/// A subtree to contain, for `agent` to run through `act::contain`.
#[derive(Clone, Debug)]
pub struct ActionRequest {
    pub detector: Detector,
    pub rule: Rule,
    /// The subtree's lineage tag in the kernel: the offender's lineage
    /// node, or a tag the fork probe gave it (see `guard_common::auto_tag`).
    pub tag: u64,
    /// The offender's lineage node, when known (the root of a subtree the
    /// fork probe tagged may be gone before the agent hears of it).
    pub root: Option<NodeId>,
    pub kind: ActionKind,
    pub offender: Option<Offender>,
    pub members: Vec<Member>,
    /// Memory actions: the pool and its unreclaimable bytes at the alert.
    pub pool: Option<(PoolKey, u64)>,
    /// How many follow-ups came before this one (0: the first action).
    pub follow_ups: u32,
    /// The incident of the alert that asked for it (set by the pipeline
    /// when it raises the alert: see `incidents`).
    pub incident: Option<String>,
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
        ProcState::Running | ProcState::Unknown => true,
    }
}

/// What every `action` record starts with.
fn action_head(request: &ActionRequest, dry_run: bool) -> ActionHead {
    ActionHead {
        incident: request.incident.clone(),
        detector: request.detector,
        rule: request.rule,
        action: request.kind,
        dry_run,
        offender: request.offender.clone(),
    }
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
    /// The detectors that are plugins (see `plugin`).
    plugins: Vec<Box<dyn Plugin>>,
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
    /// (A cache: filled by readers that only look.)
    pool_of_dir: std::cell::RefCell<HashMap<Arc<str>, Option<PoolKey>>>,
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
    /// What the glue reads of the host (/proc, cgroup files).
    host: Arc<dyn Host + Send + Sync>,
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
    /// Cgroups whose verdict the fork probe has been told, if it needed
    /// one; of them, those with an entry in its `SCOPE` map, by verdict.
    exempt_cgroups: HashSet<Arc<str>>,
    scope_entries: HashMap<Arc<str>, u32>,
    /// Per memory pool, up to two snapshots (time, tgid → unreclaimable
    /// bytes) taken while it grew: what subtree growth is measured from.
    baselines: HashMap<PoolKey, std::collections::VecDeque<Baseline>>,
    /// The last /proc/vmstat swap counters (time, pswpin, refaults), and
    /// the host's memory pressure at the last reading, when it was under it.
    last_swap: Option<(u64, u64, u64)>,
    pressure_now: Option<HostPressure>,
    /// Every event lost so far, in the kernel and the agent's queue.
    losses: Option<LossCounter>,
    /// Its value at the last recount.
    losses_seen: u64,
    /// A sweep of the table is due (events were lost).
    sweep_pending: bool,
    /// The newest event handled, boot ns.
    last_event_ns: u64,
    /// Refusals in force (their tags stay in `active` meanwhile: the same
    /// offender is not acted on twice).
    refusals: crate::respond::refusal::Refusals<ActionRequest>,
    /// Open incidents: what ties one runaway's records together.
    incidents: crate::output::incident::Incidents,
    /// `--incident-dir`: what reports are made of, and their writer.
    reports: Option<ReportBook>,
}

/// Incident ids begin with the agent's start time (UTC, to the second),
/// which keeps them unique on a host across restarts.
fn incident_prefix() -> String {
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    now.chars().filter(|c| !matches!(c, '-' | ':')).collect()
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
        let settings_refusal = settings.refusal;
        Self {
            settings,
            scope,
            protection,
            table,
            detectors,
            plugins: Vec::new(),
            counters: Counters {
                seen: [0; KIND_SLOTS as usize],
                shown: 0,
            },
            out,
            primary,
            pids_index,
            mem_index,
            pool_of_dir: Default::default(),
            active: HashSet::new(),
            watched: HashSet::new(),
            tagged: HashMap::new(),
            system,
            host: Arc::new(LiveHost),
            pending: Vec::new(),
            last_reclaim_stall_ns: None,
            exempt_pids: HashSet::new(),
            baselines: HashMap::new(),
            last_swap: None,
            pressure_now: None,
            thread_depth: HashMap::new(),
            exempt_cgroups: HashSet::new(),
            scope_entries: HashMap::new(),
            losses: None,
            losses_seen: 0,
            sweep_pending: false,
            last_event_ns: 0,
            refusals: crate::respond::refusal::Refusals::new(settings_refusal),
            incidents: crate::output::incident::Incidents::new(incident_prefix()),
            reports: None,
        }
    }

    /// Runs `plugins` (see `plugin`), in this order.
    pub fn with_plugins(mut self, plugins: Vec<Box<dyn Plugin>>) -> Self {
        self.plugins = plugins;
        self
    }

    /// Reads the host through `host` (a fixture, in tests).
    pub fn with_host(mut self, host: Arc<dyn Host + Send + Sync>) -> Self {
        self.host = host;
        self
    }

    /// Recount populations whenever `losses` has grown (see
    /// [`Pipeline::recount_after_losses`]).
    pub fn with_loss_counter(mut self, losses: LossCounter) -> Self {
        self.losses_seen = losses();
        self.losses = Some(losses);
        self
    }

    /// Whether an action is under way.
    pub fn acting(&self) -> bool {
        !self.active.is_empty()
    }

    /// Applies one event to the table and the detector, and shows it when it
    /// passes the filters.
    pub fn handle(&mut self, event: &Event) -> io::Result<()> {
        self.last_event_ns = self.last_event_ns.max(event.boot_ns());
        self.counters.seen[event.kind() as usize] += 1;
        let moved_from = match event {
            Event::CgroupAttach(a) => self
                .table
                .get(a.tgid)
                .and_then(|p| self.population_key(&p.cgroups, p.kernel_thread)),
            _ => None,
        };
        let subject = self.apply_and_route(event)?;
        if let Some(p) = &subject {
            self.track_exemptions(event, p);
        }
        if let Event::Condemned(c) = event {
            self.kernel_condemned(c)?;
        }
        self.track_memory(event, subject.as_ref());
        if let Some(p) = &subject {
            self.count_population(event, p, moved_from);
        }
        if let (Event::CgroupAttach(_), Some(p)) = (event, &subject)
            && self.settings.kernel_filter
            && !self.scope.contains_cgroups(&p.cgroups)
        {
            // Its exit will not be written: forget it now (a move back in
            // reads it from /proc again).
            self.table.forget(p.tgid);
        }
        if let Event::Unblocked(u) = event
            && !self.detectors.blocked.unblocked(u.pid, u.since_ns)
        {
            // Already reported released from a snapshot.
            return Ok(());
        }
        self.note_history(event, subject.as_ref());
        self.show(event, subject.as_ref())
    }

    /// Applies `event` to the process table, with the plugins told before
    /// and after; writes their alerts. Returns the process it is about.
    fn apply_and_route(&mut self, event: &Event) -> io::Result<Option<ProcInfo>> {
        let mut plugins = std::mem::take(&mut self.plugins);
        for plugin in &mut plugins {
            plugin.before(&self.view(), event);
        }
        let subject = self.table.apply(event);
        let mut verdicts = Vec::new();
        for plugin in &mut plugins {
            let mut v = plugin.event(&self.view(), event, subject.as_ref());
            if !self.settings.runs(plugin.detector()) {
                v.clear();
            }
            verdicts.append(&mut v);
        }
        self.plugins = plugins;
        self.verdicts(event.boot_ns(), verdicts)?;
        Ok(subject)
    }

    /// Writes `event` when it passes the filters, with what the process
    /// table knows of its subject.
    fn show(&mut self, event: &Event, subject: Option<&ProcInfo>) -> io::Result<()> {
        let s = &self.settings;
        if !s.events.contains(event.kind())
            || (event.is_thread_level() && !s.threads)
            || !self.scope.contains(subject)
        {
            return Ok(());
        }
        let ppid = match event {
            Event::Fork(f) => Some(f.child_ppid),
            Event::Exit(e) => Some(e.ppid),
            _ => subject.map(|p| p.ppid),
        };
        let ctx = Context {
            comm: subject.map(|p| p.comm),
            ppid,
            parent_comm: ppid.and_then(|p| self.table.get(p)).map(|p| p.comm),
            cgroup: subject.and_then(|p| p.cgroup(self.primary)).map(|s| &**s),
            age_ns: match (event, subject) {
                (Event::Exit(e), Some(p)) if p.start_boot_ns > 0 => {
                    Some(e.boot_ns.saturating_sub(p.start_boot_ns))
                }
                _ => None,
            },
            memory_cgroup: match (event, self.mem_index) {
                (Event::OomKill(_), Some(index)) => {
                    subject.and_then(|p| p.cgroup(index)).map(|c| &**c)
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

    /// What the plugins see of the pipeline.
    fn view(&self) -> View<'_> {
        View {
            settings: &self.settings,
            table: &self.table,
            protection: &self.protection,
            scope: &self.scope,
            host: &*self.host,
            primary: self.primary,
            fork: &self.detectors.fork,
            tagged: &self.tagged,
            mem_index: self.mem_index,
            pools: &self.pool_of_dir,
        }
    }

    /// Raises the plugins' alerts and queues their actions.
    fn verdicts(&mut self, now: u64, verdicts: Vec<Verdict>) -> io::Result<()> {
        for v in verdicts {
            let incident = self.raise(now, v.subject, &v.alert)?;
            if let Some(mut request) = v.action {
                request.incident = Some(incident);
                self.queue(request)?;
            }
        }
        Ok(())
    }

    /// Hands this tick's task counts to the plugins.
    pub(super) fn pids_to_plugins(&mut self, now: u64, readings: &[PidsReading]) {
        let mut plugins = std::mem::take(&mut self.plugins);
        for plugin in &mut plugins {
            plugin.pids(&self.view(), now, readings);
        }
        self.plugins = plugins;
    }

    /// Evaluates the detectors; writes alerts; returns the actions to run.
    pub fn check(&mut self, now: u64) -> io::Result<Vec<ActionRequest>> {
        self.watch_armed();
        let mut requests = self.fork_verdicts(now)?;
        let mut plugins = std::mem::take(&mut self.plugins);
        let mut verdicts = Vec::new();
        for plugin in &mut plugins {
            let mut v = plugin.check(&self.view(), now);
            if !self.settings.runs(plugin.detector()) {
                v.clear();
            }
            verdicts.append(&mut v);
        }
        self.plugins = plugins;
        self.verdicts(now, verdicts)?;
        for verdict in self.detectors.memory.check(now) {
            if self.settings.runs(Detector::Memory)
                && !self.settings.ignore_memory.cgroup(Some(&verdict.pool))
            {
                self.memory_alert(now, &verdict)?;
            }
        }
        requests.append(&mut self.pending);
        self.incident_requested(&requests, now);
        self.expire_incidents(now)?;
        self.out.flush_records()?;
        Ok(requests)
    }

    fn describe_offender(&self, node: NodeId, subtree: usize) -> Option<Offender> {
        self.view().describe(node, subtree)
    }

    fn dry_run(&mut self, request: &ActionRequest) -> io::Result<()> {
        self.out.record(&ActionRecord::DryRun(ActionDryRun {
            head: action_head(request, true),
            members: request.members.iter().map(|m| m.tgid).collect(),
        }))
    }

    /// An action finished: report it. When members of the subtree are still
    /// alive by the lineage (born before they could be tagged), request a
    /// follow-up.
    pub fn action_done(
        &mut self,
        request: &ActionRequest,
        outcome: &Outcome,
        now: u64,
    ) -> io::Result<Vec<ActionRequest>> {
        // A refusal in force keeps its offender active until it ends.
        let refusing = self.refusal_started(request, outcome, now);
        self.incident_acted(
            request.incident.as_deref(),
            now,
            outcome.contained,
            refusing,
        );
        if !refusing {
            self.active.remove(&request.tag);
        }
        self.watched.remove(&request.tag);
        self.tagged.retain(|_, (tag, _)| *tag != request.tag);
        let memory = request.pool.as_ref().map(|(pool, before)| {
            let after = self.host.pool_usage(pool);
            Freed {
                usage_before_bytes: *before,
                usage_after_bytes: after.map(|a| a.unreclaimable),
                freed_bytes: after.map(|a| before.saturating_sub(a.unreclaimable)),
            }
        });
        let record = ActionRecord::Done(Box::new(ActionDone {
            head: action_head(request, false),
            signals: request
                .kind
                .signal()
                .map(|s| crate::output::signal_name(s).to_owned()),
            members: request.members.len(),
            outcome: outcome.clone(),
            memory,
        }));
        self.out.record(&record)?;
        if self.reports.is_some()
            && let Ok(mut value) = serde_json::to_value(&record)
        {
            if let Some(o) = value.as_object_mut() {
                o.insert("kind".into(), "action".into());
                o.insert("time".into(), self.out.time_rfc3339(now).into());
            }
            self.report_acted(request, outcome, value);
        }
        self.out.flush()?;
        if request.detector != Detector::Fork && request.members.len() <= 1 {
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
        if request.kind.refuses() {
            // A refusal leaves its members running: only those it could not
            // tag yet (born before) are left to do.
            left.retain(|m| {
                system.state(m.tgid) == ProcState::Running
                    && system.tag_of(m.tgid) != Some(request.tag)
            });
        } else {
            left.retain(|m| still_to_contain(request.kind, system.state(m.tgid)));
        }
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
        let follow_ups = vec![follow_up];
        self.incident_requested(&follow_ups, now);
        Ok(follow_ups)
    }

    pub fn seen_by_kind(&self) -> std::collections::BTreeMap<&'static str, u64> {
        EventKind::ALL
            .iter()
            .map(|k| (k.name(), self.counters.seen[*k as usize]))
            .collect()
    }
}
