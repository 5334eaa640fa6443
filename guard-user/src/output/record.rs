//! The records guard writes besides kernel events: one type per kind, and
//! per rule where the figures differ. They are the single description of
//! the stream: `Output::record` writes them (JSON or text), hooks and
//! metrics read their typed fields, and `output::schema` derives the JSON
//! Schema from them (`cargo xtask schema` writes schema/guard.schema.json).
//!
//! Fields are written in their type's order. Top-level fields keep the
//! order the records had before they were typed; nested objects that were
//! `json!` maps (written alphabetically) keep alphabetical order where the
//! type allows it (an offender's own fields, a supervisor), and otherwise
//! follow the type (an outcome, the memory figures of an offender): see
//! docs/schema.md for what changed.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use crate::output::incident::{Ended, Severity};
use crate::{
    detect::switches::Detector,
    host::kube::Qos,
    respond::{act::Outcome, hook::HookSubject, policy::ActionKind},
};

/// Every kind of record that is not a kernel event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    Start,
    Summary,
    Lost,
    Blocked,
    Unblocked,
    Alert,
    Action,
    Resolved,
    Refusal,
    Snapshot,
}

impl RecordKind {
    pub fn name(self) -> &'static str {
        match self {
            RecordKind::Start => "start",
            RecordKind::Summary => "summary",
            RecordKind::Lost => "lost",
            RecordKind::Blocked => "blocked",
            RecordKind::Unblocked => "unblocked",
            RecordKind::Alert => "alert",
            RecordKind::Action => "action",
            RecordKind::Resolved => "resolved",
            RecordKind::Refusal => "refusal",
            RecordKind::Snapshot => "snapshot",
        }
    }
}

/// A record: its kind, and what metrics and hooks read of it.
pub trait Record: Serialize {
    const KIND: RecordKind;
    /// What the metrics count it as (alerts and actions).
    fn counted(&self) -> Option<Counted> {
        None
    }
    /// What a hook is told of it, when a hook runs for it (alerts and
    /// actions).
    fn hook(&self) -> Option<HookSubject> {
        None
    }
}

/// The rules behind alerts, as records name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// Fork: a subtree's births and self-copies (see docs/fork-guard.md).
    Explosion,
    /// Fork: pids.current on a steady course to pids.max.
    PidsLimitTrend,
    /// Fork: a rush of births with pids.max in reach.
    PidsLimitRush,
    /// Leak: a population that grows and never comes back.
    Leak,
    /// Crash loop: a program started again and again, failing each time.
    CrashLoop,
    /// Memory: usage on a steady course to the pool's limit.
    MemoryLimitTrend,
    /// Memory: too little headroom left.
    MemoryHeadroom,
    /// Memory: the host under pressure (PSI, thrashing).
    MemoryPressure,
    /// Blocked tasks: many tasks in D state at once.
    BlockedStorm,
}

impl Rule {
    pub const ALL: [Rule; 9] = [
        Rule::Explosion,
        Rule::PidsLimitTrend,
        Rule::PidsLimitRush,
        Rule::Leak,
        Rule::CrashLoop,
        Rule::MemoryLimitTrend,
        Rule::MemoryHeadroom,
        Rule::MemoryPressure,
        Rule::BlockedStorm,
    ];

    /// The detector whose rule it is.
    pub fn detector(self) -> Detector {
        match self {
            Rule::Explosion | Rule::PidsLimitTrend | Rule::PidsLimitRush => Detector::Fork,
            Rule::Leak => Detector::Leak,
            Rule::CrashLoop => Detector::Crashloop,
            Rule::MemoryLimitTrend | Rule::MemoryHeadroom | Rule::MemoryPressure => {
                Detector::Memory
            }
            Rule::BlockedStorm => Detector::Blocked,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Rule::Explosion => "explosion",
            Rule::PidsLimitTrend => "pids_limit_trend",
            Rule::PidsLimitRush => "pids_limit_rush",
            Rule::Leak => "leak",
            Rule::CrashLoop => "crash_loop",
            Rule::MemoryLimitTrend => "memory_limit_trend",
            Rule::MemoryHeadroom => "memory_headroom",
            Rule::MemoryPressure => "memory_pressure",
            Rule::BlockedStorm => "blocked_storm",
        }
    }
}

impl From<crate::detect::fork::LimitRule> for Rule {
    fn from(rule: crate::detect::fork::LimitRule) -> Self {
        use crate::detect::fork::LimitRule;
        match rule {
            LimitRule::Trend => Rule::PidsLimitTrend,
            LimitRule::Rush => Rule::PidsLimitRush,
        }
    }
}

impl From<crate::detect::memory::MemoryRule> for Rule {
    fn from(rule: crate::detect::memory::MemoryRule) -> Self {
        use crate::detect::memory::MemoryRule;
        match rule {
            MemoryRule::Horizon => Rule::MemoryLimitTrend,
            MemoryRule::Headroom => Rule::MemoryHeadroom,
            MemoryRule::Pressure => Rule::MemoryPressure,
        }
    }
}

/// How an action ended, as the metrics count it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ActionResult {
    /// A `refuse` in force.
    Refusing,
    Contained,
    NotContained,
    DryRun,
}

impl ActionResult {
    pub fn name(self) -> &'static str {
        match self {
            ActionResult::Refusing => "refusing",
            ActionResult::Contained => "contained",
            ActionResult::NotContained => "not_contained",
            ActionResult::DryRun => "dry_run",
        }
    }
}

/// What the metrics count a record as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counted {
    Alert(Detector, Rule),
    Action(Detector, ActionKind, ActionResult),
}

/// A Kubernetes pod's identity, beside a cgroup inside one: what the
/// cgroup's path gives (UID, container, QoS class) and, where kubelet's
/// log directory names the pod, its namespace and name.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct PodFields {
    pub container_id: Option<String>,
    pub pod_uid: String,
    pub qos: Qos,
    /// `None` where the node's `--pod-logs` directory does not name it.
    pub namespace: Option<String>,
    pub pod: Option<String>,
}

impl PodFields {
    /// The pod `cgroup` is in, named through `names` (at `now_ns`).
    pub fn of(cgroup: &str, names: &crate::host::kube::PodNames, now_ns: u64) -> Option<Self> {
        let p = crate::host::kube::pod_of(cgroup)?;
        let name = names.lookup(&p.uid, now_ns);
        Some(Self {
            container_id: p.container_id,
            qos: p.qos,
            namespace: name.as_ref().map(|n| n.namespace.clone()),
            pod: name.map(|n| n.name),
            pod_uid: p.uid,
        })
    }
}

/// The process an alert blames, and what it leads.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum Offender {
    Known(Box<Process>),
    /// The fork probe condemned a subtree whose root exited before the
    /// agent heard of it.
    Gone {
        note: String,
        pid: Option<u32>,
    },
}

impl Offender {
    pub fn process(&self) -> Option<&Process> {
        match self {
            Offender::Known(p) => Some(p),
            Offender::Gone { .. } => None,
        }
    }
}

/// A process as the lineage knows it (from fork and exec records: reading
/// /proc of a forking process waits on its mmap_lock).
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct Process {
    pub alive: bool,
    pub cgroup: Option<String>,
    pub cmdline: Option<Vec<String>>,
    pub comm: String,
    /// The name's bytes, when they are not UTF-8 (`comm` is then lossy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm_hex: Option<String>,
    pub exe: Option<String>,
    /// It bears a protected name, but is not the trusted executable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_spared_because: Option<String>,
    pub pid: u32,
    /// Members of its subtree that may be signalled (absent: the action
    /// takes this process alone).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subtree_size: Option<usize>,
    /// A blocked-task storm's memory runaway: the pool it grew in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_cgroup: Option<String>,
    #[serde(flatten)]
    pub pod: Option<PodFields>,
    /// Memory rules: how much it grew.
    #[serde(flatten)]
    pub growth: Option<Growth>,
}

/// A memory offender's growth.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct Growth {
    pub growth_bytes: u64,
    pub resident_bytes: u64,
    /// Measured against the pool's baseline (absent: from its own `rss`
    /// records).
    #[serde(flatten)]
    pub share: Option<Share>,
}

/// A subtree's part of its pool's growth since the baseline.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct Share {
    /// How long ago the baseline was taken.
    pub baseline_secs: Option<f64>,
    /// Its part of the pool's growth (0 to 1).
    pub share_of_growth: f64,
}

/// The tail every alert that blames a process ends with: whom, and what
/// guard does.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct Blame {
    /// `null`: nobody could be blamed (see `note`).
    pub offender: Option<Offender>,
    /// Absent when nobody is blamed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<ActionKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Blame {
    pub fn on(offender: Option<Offender>, action: ActionKind) -> Self {
        Self {
            offender,
            action: Some(action),
            note: None,
        }
    }

    pub fn nobody(note: &str) -> Self {
        Self {
            offender: None,
            action: None,
            note: Some(note.to_owned()),
        }
    }

    fn hook(&self, detector: Detector, rule: Rule, cgroup: Option<&str>) -> HookSubject {
        let process = self.offender.as_ref().and_then(Offender::process);
        HookSubject {
            detector: Some(detector),
            rule: Some(rule.name()),
            action: self.action,
            pid: process.map(|p| p.pid),
            comm: process.map(|p| p.comm.clone()),
            cgroup: process
                .and_then(|p| p.cgroup.clone())
                .or_else(|| cgroup.map(str::to_owned)),
            ..HookSubject::default()
        }
    }
}

/// An alert: a rule's verdict, with its figures.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum Alert {
    Explosion(ExplosionAlert),
    PidsLimit(PidsLimitAlert),
    Leak(LeakAlert),
    CrashLoop(CrashLoopAlert),
    Memory(MemoryAlert),
    BlockedStorm(StormAlert),
}

impl Alert {
    pub fn detector(&self) -> Detector {
        match self {
            Alert::Explosion(a) => a.detector,
            Alert::PidsLimit(a) => a.detector,
            Alert::Leak(a) => a.detector,
            Alert::CrashLoop(a) => a.detector,
            Alert::Memory(a) => a.detector,
            Alert::BlockedStorm(a) => a.detector,
        }
    }

    pub fn rule(&self) -> Rule {
        match self {
            Alert::Explosion(a) => a.rule,
            Alert::PidsLimit(a) => a.rule,
            Alert::Leak(a) => a.rule,
            Alert::CrashLoop(a) => a.rule,
            Alert::Memory(a) => a.rule,
            Alert::BlockedStorm(a) => a.rule,
        }
    }
}

/// What ties an alert to its runaway (see `output::incident`).
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct IncidentFields {
    /// The incident: every alert, action, refusal and `resolved` record of
    /// one runaway carries its id (`<agent start, UTC>-<n>`).
    pub incident: String,
    pub severity: Severity,
    /// The incident was reported before, and this alert raises its
    /// severity (a crash loop now sustained, a pool past its headroom).
    /// Verdicts that tell nothing new are not written: `resolved` counts
    /// them as `repeats`.
    pub update: bool,
}

/// An alert as written: its incident, then the rule's figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AlertRecord<'a> {
    #[serde(flatten)]
    pub incident: IncidentFields,
    #[serde(flatten)]
    pub alert: &'a Alert,
}

impl Alert {
    /// How bad it is: running out now (or a sustained crash loop) is
    /// critical; a projection is a warning.
    pub fn severity(&self) -> Severity {
        match self {
            Alert::CrashLoop(a) if a.sustained => Severity::Critical,
            Alert::CrashLoop(_) => Severity::Warning,
            _ => match self.rule() {
                Rule::Explosion
                | Rule::PidsLimitRush
                | Rule::MemoryHeadroom
                | Rule::MemoryPressure
                | Rule::BlockedStorm => Severity::Critical,
                _ => Severity::Warning,
            },
        }
    }

    /// The alert as written, on incident `id` (`update`: it raises the
    /// incident's severity).
    pub fn told(&self, id: &str, update: bool) -> AlertRecord<'_> {
        AlertRecord {
            incident: IncidentFields {
                incident: id.to_owned(),
                severity: self.severity(),
                update,
            },
            alert: self,
        }
    }

    /// The offender's pid, when a process is blamed.
    pub fn offender_pid(&self) -> Option<u32> {
        let blame = match self {
            Alert::Explosion(a) => &a.blame,
            Alert::PidsLimit(a) => &a.blame,
            Alert::Leak(a) => &a.blame,
            Alert::Memory(a) => &a.blame,
            Alert::BlockedStorm(a) => &a.blame,
            Alert::CrashLoop(a) => return Some(a.supervisor.pid),
        };
        blame
            .offender
            .as_ref()
            .and_then(Offender::process)
            .map(|p| p.pid)
    }
}

impl Record for AlertRecord<'_> {
    const KIND: RecordKind = RecordKind::Alert;

    fn counted(&self) -> Option<Counted> {
        Some(Counted::Alert(self.alert.detector(), self.alert.rule()))
    }

    fn hook(&self) -> Option<HookSubject> {
        let (d, r) = (self.alert.detector(), self.alert.rule());
        let subject = match self.alert {
            Alert::Explosion(a) => a.blame.hook(d, r, a.cgroup.as_deref()),
            Alert::PidsLimit(a) => a.blame.hook(d, r, Some(&a.cgroup)),
            Alert::Leak(a) => a.blame.hook(d, r, Some(&a.cgroup)),
            Alert::Memory(a) => a.blame.hook(d, r, Some(&a.cgroup)),
            Alert::BlockedStorm(a) => a.blame.hook(d, r, None),
            // The program that crashed last, under its supervisor (whom a
            // `stop` takes: GUARD_SUPERVISOR_PID).
            Alert::CrashLoop(a) => HookSubject {
                detector: Some(d),
                rule: Some(r.name()),
                action: Some(a.action),
                pid: Some(a.last_pid),
                comm: Some(a.program.clone()),
                supervisor_pid: Some(a.supervisor.pid),
                cgroup: a.cgroup.clone(),
                ..HookSubject::default()
            },
        };
        Some(HookSubject {
            incident: Some(self.incident.incident.clone()),
            severity: Some(self.incident.severity.name()),
            ..subject
        })
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// `explosion`: births and self-copies in a window (the agent's rule, or
/// the fork probe's condemnation).
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct ExplosionAlert {
    pub detector: Detector,
    pub rule: Rule,
    /// `null` only when the fork probe condemned a subtree whose root the
    /// agent never knew.
    pub cgroup: Option<String>,
    pub births: u64,
    pub births_per_sec: f64,
    pub growth: u64,
    pub deep_births: u64,
    /// Live tasks (the agent's rule; the probe does not count them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live: Option<u64>,
    pub window_ms: u64,
    /// The fork probe condemned the subtree first, on its own budget.
    #[serde(skip_serializing_if = "is_false")]
    pub condemned_by_kernel: bool,
    #[serde(flatten)]
    pub blame: Blame,
}

/// `pids_limit_trend` and `pids_limit_rush`: pids.max within reach.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct PidsLimitAlert {
    pub detector: Detector,
    pub rule: Rule,
    pub cgroup: String,
    pub current: u64,
    pub limit: u64,
    pub per_sec: f64,
    pub eta_secs: f64,
    /// `eta_secs` for people ("1.5s").
    pub eta: String,
    #[serde(skip_serializing_if = "is_false")]
    pub condemned_by_kernel: bool,
    #[serde(flatten)]
    pub blame: Blame,
}

/// Which limit a leak reaches first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Resource {
    /// The cgroup's `pids.max`.
    Pids,
    /// The memory pool: a memory cgroup's limit, or the host's memory.
    Memory,
    /// The host's task table: the lower of `kernel.pid_max` and
    /// `kernel.threads-max`.
    HostTasks,
}

/// `leak`: a population that keeps growing, with projections.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct LeakAlert {
    pub detector: Detector,
    pub rule: Rule,
    pub cgroup: String,
    pub tasks_now: u64,
    /// Tasks at the start of the window that met the rule.
    pub tasks_before: u64,
    /// That window: 180 s for growth of a task every 9 s or faster, longer
    /// for slower growth (up to `--leak-window`).
    pub window_secs: u64,
    pub per_min: f64,
    pub pids_limit: Option<u64>,
    pub pids_eta_secs: Option<f64>,
    /// The memory pool the leaking tasks count against (`host`, or a
    /// memory cgroup with a limit).
    pub memory_pool: String,
    pub memory_bytes: Option<u64>,
    pub memory_limit_bytes: Option<u64>,
    /// The memory (anon + shmem) each member of the leaking subtree holds,
    /// on average: what each new one will add.
    pub memory_per_task_bytes: Option<u64>,
    pub memory_eta_secs: Option<f64>,
    /// Tasks on the host, and the most it can have (the lower of
    /// `kernel.pid_max` and `kernel.threads-max`).
    pub host_tasks: Option<u64>,
    pub host_tasks_limit: Option<u64>,
    pub host_tasks_eta_secs: Option<f64>,
    pub runs_out_first: Option<Resource>,
    #[serde(flatten)]
    pub blame: Blame,
}

/// The process that restarts a crash loop's program.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct Supervisor {
    pub comm: Option<String>,
    pub pid: u32,
}

/// `crash_loop`: a program restarted and failing again and again.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct CrashLoopAlert {
    pub detector: Detector,
    pub rule: Rule,
    pub program: String,
    pub cgroup: Option<String>,
    /// The systemd unit of the cgroup, if it is one's.
    pub unit: Option<String>,
    pub supervisor: Supervisor,
    /// Crashes within the window.
    pub crashes: u64,
    pub window_secs: u64,
    /// Crashes a minute in the window (over a second at least).
    pub per_minute: f64,
    /// Crashes since the loop began (after its last success, or a window
    /// without one).
    pub loop_crashes: u64,
    /// How long the loop has gone on without a break.
    pub loop_secs: f64,
    /// The share of that time the program was running (0 to 1): a retry
    /// paced by long waits is far below one half.
    pub busy: f64,
    /// The loop is sustained (see `--crashloop-stop-after`): the only kind
    /// `--crashloop-action stop` acts on. The first alert of a loop is an
    /// early report, and a sustained loop gets one more.
    pub sustained: bool,
    /// The last exits: `exit N` or a signal's name.
    pub statuses: Vec<String>,
    pub last_pid: u32,
    pub action: ActionKind,
    /// Why the supervisor is left alone although the action says stop.
    pub not_stopped_because: Option<String>,
}

/// The host's memory pressure behind a `memory_pressure` alert.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct HostPressure {
    pub psi_full_avg10: Option<f64>,
    pub psi_some_avg10: Option<f64>,
    pub refaults_per_sec: Option<f64>,
    pub swapin_pages_per_sec: Option<f64>,
}

/// The memory rules: a pool's usage against its limit.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct MemoryAlert {
    pub detector: Detector,
    pub rule: Rule,
    /// The pool: `host`, or a memory cgroup's directory.
    pub cgroup: String,
    pub usage_bytes: u64,
    pub charged_bytes: u64,
    pub limit_bytes: u64,
    pub percent: f64,
    pub mib_per_sec: f64,
    pub eta_secs: Option<f64>,
    /// `memory_pressure` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pressure: Option<Option<HostPressure>>,
    #[serde(flatten)]
    pub blame: Blame,
}

/// The wait most blocked tasks share.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct SharedWait {
    pub frames: Vec<String>,
    pub tasks: u64,
}

/// PSI memory averages (percent).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, JsonSchema)]
pub struct Psi {
    pub full_avg10: f64,
    pub some_avg10: f64,
}

/// Whether a storm comes with memory pressure, and why it is said to.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct StormPressure {
    pub psi: Option<Psi>,
    pub reasons: Vec<String>,
}

/// `blocked_storm`: many tasks in D state at once.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct StormAlert {
    pub detector: Detector,
    pub rule: Rule,
    pub count: u64,
    pub killable: u64,
    pub threshold_secs: f64,
    pub longest_ms: u64,
    pub shared_wait: Option<SharedWait>,
    pub memory_pressure: StormPressure,
    pub pids: Vec<u32>,
    #[serde(flatten)]
    pub blame: Blame,
}

/// What guard did about an alert (or would do, under --dry-run).
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum ActionRecord {
    Done(Box<ActionDone>),
    DryRun(ActionDryRun),
}

/// The head every action record starts with.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct ActionHead {
    /// The incident of the alert it follows (see `alert`).
    pub incident: Option<String>,
    pub detector: Detector,
    pub rule: Rule,
    pub action: ActionKind,
    pub dry_run: bool,
    pub offender: Option<Offender>,
}

/// An action taken, and its verified outcome.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct ActionDone {
    #[serde(flatten)]
    pub head: ActionHead,
    /// The signal sent; `null` for a `refuse` (nobody is signalled).
    pub signals: Option<String>,
    /// Members it was sent to.
    pub members: usize,
    pub outcome: Outcome,
    /// Memory actions: the pool's unreclaimable bytes before and after.
    #[serde(flatten)]
    pub memory: Option<Freed>,
}

/// A memory action's effect on its pool.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct Freed {
    pub usage_before_bytes: u64,
    pub usage_after_bytes: Option<u64>,
    pub freed_bytes: Option<u64>,
}

/// An action --dry-run did not take: the members it would have signalled.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct ActionDryRun {
    #[serde(flatten)]
    pub head: ActionHead,
    pub members: Vec<u32>,
}

impl ActionRecord {
    fn head(&self) -> &ActionHead {
        match self {
            ActionRecord::Done(d) => &d.head,
            ActionRecord::DryRun(d) => &d.head,
        }
    }
}

impl Record for ActionRecord {
    const KIND: RecordKind = RecordKind::Action;

    fn counted(&self) -> Option<Counted> {
        let h = self.head();
        let result = match self {
            ActionRecord::DryRun(_) => ActionResult::DryRun,
            ActionRecord::Done(d) if d.outcome.refusing => ActionResult::Refusing,
            ActionRecord::Done(d) if d.outcome.contained => ActionResult::Contained,
            ActionRecord::Done(_) => ActionResult::NotContained,
        };
        Some(Counted::Action(h.detector, h.action, result))
    }

    fn hook(&self) -> Option<HookSubject> {
        let h = self.head();
        let process = h.offender.as_ref().and_then(Offender::process);
        Some(HookSubject {
            incident: h.incident.clone(),
            detector: Some(h.detector),
            rule: Some(h.rule.name()),
            action: Some(h.action),
            pid: process.map(|p| p.pid),
            comm: process.map(|p| p.comm.clone()),
            cgroup: process.and_then(|p| p.cgroup.clone()),
            ..HookSubject::default()
        })
    }
}

/// An incident is over: how it ended, and what it took (see
/// `output::incident`). Every incident gets one, the agent's stop included.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct Resolved {
    pub incident: String,
    pub detector: Detector,
    /// The rule of its first alert.
    pub rule: Rule,
    /// The highest severity it reached.
    pub severity: Severity,
    pub ended: Ended,
    /// When its first alert was raised (boot ns).
    pub opened_boot_ns: u64,
    pub lasted_ms: u64,
    /// Alerts written: the first, and updates.
    pub alerts: u64,
    /// Verdicts that repeated what was told (not written).
    pub repeats: u64,
    /// Actions taken, follow-up rounds and ladder steps included.
    pub actions: u64,
    /// The process first blamed (a crash loop's supervisor).
    pub offender_pid: Option<u32>,
    /// A blocked-task storm: the most tasks blocked at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak: Option<u64>,
}

impl Resolved {
    pub fn of(closed: &crate::output::incident::Closed, peak: Option<u64>) -> Self {
        let i = &closed.incident;
        Self {
            incident: i.id.clone(),
            detector: i.detector,
            rule: i.rule,
            severity: i.severity,
            ended: closed.ended,
            opened_boot_ns: i.opened_ns,
            lasted_ms: closed.at_ns.saturating_sub(i.opened_ns) / 1_000_000,
            alerts: i.alerts,
            repeats: i.repeats,
            actions: i.actions,
            offender_pid: i.offender_pid,
            peak,
        }
    }
}

impl Record for Resolved {
    const KIND: RecordKind = RecordKind::Resolved;

    fn hook(&self) -> Option<HookSubject> {
        Some(HookSubject {
            incident: Some(self.incident.clone()),
            severity: Some(self.severity.name()),
            detector: Some(self.detector),
            rule: Some(self.rule.name()),
            pid: self.offender_pid,
            ..HookSubject::default()
        })
    }
}

/// How a refusal goes (see `respond::refusal`): the lineage is trying
/// (forks are being refused), went quiet (none for 5 s), or the refusal
/// ended, and why.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct RefusalRecord {
    /// The incident of the alert it follows.
    pub incident: Option<String>,
    pub detector: Detector,
    pub rule: Rule,
    pub state: crate::respond::refusal::State,
    /// Why it ended (`state` is `ended`).
    pub ended: Option<crate::respond::refusal::Ended>,
    /// The ladder's next step, taken now (`ended` is `escalated`).
    pub then: Option<ActionKind>,
    pub offender: Option<Offender>,
    /// Forks and clones refused since the refusal began.
    pub refused: u64,
    /// Members born since the refusal began: forks that had passed the
    /// kernel's hook before it and completed after (a handful; under heavy
    /// load a fork can take milliseconds to complete).
    pub slipped: u64,
    /// Refused per second over the last second.
    pub per_second: f64,
    pub peak_per_second: f64,
    /// When the first and the last fork were refused (boot ns).
    pub first_refused_boot_ns: Option<u64>,
    pub last_refused_boot_ns: Option<u64>,
    /// Since the refusal began.
    pub refusing_secs: f64,
    /// Members alive now.
    pub members: usize,
}

impl Record for RefusalRecord {
    const KIND: RecordKind = RecordKind::Refusal;
}

/// A task crossed the blocked threshold (D state).
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct Blocked {
    pub pid: u32,
    pub tgid: u32,
    pub comm: String,
    pub cgroup: Option<String>,
    pub kernel_thread: bool,
    pub since_ns: u64,
    pub blocked_ms: u64,
    pub killable: bool,
    /// Where it waits (`/proc/PID/wchan`), when readable.
    pub wchan: Option<String>,
    /// Its kernel stack (`/proc/PID/task/TID/stack`), when readable.
    pub stack: Vec<String>,
}

impl Record for Blocked {
    const KIND: RecordKind = RecordKind::Blocked;
}

/// A blocked task seen running again by a snapshot, not by the probe: its
/// time is approximate (the probe's `unblocked` event is exact).
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct UnblockedSeen {
    pub pid: u32,
    pub since_ns: u64,
    pub blocked_ms: u64,
    pub killable: bool,
    /// Always true: told apart from the event of the same kind.
    pub approximate: bool,
}

impl Record for UnblockedSeen {
    const KIND: RecordKind = RecordKind::Unblocked;
}

/// A probe that was not attached, and why.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct Skipped {
    pub probe: String,
    pub reason: String,
}

/// The agent is ready: what it attached and how it runs.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct Start {
    pub version: String,
    pub pid: u32,
    pub probes: Vec<String>,
    pub skipped: Vec<Skipped>,
    pub cgroup_hierarchy: String,
    /// `--cgroup` directories (empty: the whole host).
    pub scope: Vec<String>,
    /// Processes known at start.
    pub processes: u64,
    pub fork_action: ActionKind,
    pub mem_action: ActionKind,
    pub leak_action: ActionKind,
    /// Whether the kernel refuses a lineage's forks here (`refuse`, and
    /// `stop` and `kill` refusing first), and if not, why.
    pub refusal: crate::kernel::lsm::RefusalSupport,
    pub off: Vec<Detector>,
    pub dry_run: bool,
    pub memory_locked: bool,
    pub rss_bytes: u64,
    pub oom_score_adj: Option<i32>,
}

impl Record for Start {
    const KIND: RecordKind = RecordKind::Start;
}

/// Event counts by event kind (only kinds with a count).
pub type ByKind = BTreeMap<String, u64>;

/// Events were lost since the last `lost` record.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct Lost {
    pub ring_full: ByKind,
    pub read_failed: ByKind,
    pub queue_full: u64,
    pub blocked_untracked: u64,
}

impl Record for Lost {
    const KIND: RecordKind = RecordKind::Lost;
}

/// What became of the `--on-alert` hooks.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct HookTally {
    pub failed: u64,
    pub run: u64,
    pub skipped: u64,
    pub stale: u64,
}

/// The agent's last record: what it saw, lost and cost.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct Summary {
    /// Every event kind, with how many the probes wrote.
    pub seen: BTreeMap<String, u64>,
    pub rss_bytes: u64,
    pub cpu_seconds: f64,
    pub shown: u64,
    pub lost: u64,
    pub lost_ring_full: ByKind,
    pub lost_read_failed: ByKind,
    pub lost_queue_full: u64,
    pub blocked_untracked: u64,
    pub undecodable: u64,
    pub output_dropped: u64,
    pub output_write_failed: u64,
    pub records_dropped: u64,
    pub output_shed: u64,
    /// `null` without `--on-alert`.
    pub hooks: Option<HookTally>,
    pub unread_at_exit: u64,
}

impl Record for Summary {
    const KIND: RecordKind = RecordKind::Summary;
}

/// What the agent sees now, once a second, on the `--socket` stream only
/// (`guard top` draws it): every watched cgroup's tasks and memory with
/// their course toward the limit, the blocked tasks, the agent's health.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Snapshot {
    /// Cgroups whose task count is followed, soonest to their limit first.
    pub pids: Vec<PidsState>,
    /// Memory pools, soonest to their limit first.
    pub memory: Vec<PoolState>,
    /// Tasks reported blocked (D state past `--blocked-threshold`) now.
    pub blocked: Vec<BlockedState>,
    pub agent: AgentState,
}

impl Record for Snapshot {
    const KIND: RecordKind = RecordKind::Snapshot;
}

/// One cgroup's task count and its course.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PidsState {
    pub cgroup: String,
    /// pids.current: threads and zombies included.
    pub tasks: u64,
    /// pids.max (`null`: none).
    pub limit: Option<u64>,
    /// Tasks gained per second over the trend window.
    pub per_sec: f64,
    /// Births (forks and clones) per second over the fork rule's window:
    /// a churning cgroup has many and gains none (`null` for the host's
    /// count, which is no population of its own).
    pub births_per_sec: Option<f64>,
    /// Seconds to the limit at that rate (`null`: not growing toward one).
    pub eta_secs: Option<f64>,
    /// Who the fork guard would act on were it to act now: the top
    /// unprotected ancestor of the cgroup's recent births (`null` while
    /// the cgroup is not growing).
    pub offender: Option<Suspect>,
}

/// One memory pool's usage and its course.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PoolState {
    pub pool: String,
    /// Unreclaimable bytes (anonymous, shmem, swap).
    pub bytes: u64,
    pub limit_bytes: u64,
    /// Seconds to the limit on the current growing run.
    pub eta_secs: Option<f64>,
}

/// A process as the snapshot names it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Suspect {
    pub pid: u32,
    pub comm: String,
    pub exe: Option<String>,
    /// Live members of its subtree.
    pub subtree_size: usize,
}

/// A task blocked now.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BlockedState {
    pub pid: u32,
    pub comm: String,
    /// How long it has been blocked.
    pub blocked_ms: u64,
    /// The function it sleeps in (/proc/PID/wchan), when known.
    pub wchan: Option<String>,
}

/// The agent's own health.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AgentState {
    /// Events handled per second, over the last second.
    pub events_per_sec: f64,
    /// Events lost so far (kernel and queue).
    pub lost: u64,
    /// The agent's CPU over the last second, percent of one CPU.
    pub cpu_percent: f64,
    pub rss_bytes: u64,
    pub probes: usize,
    /// Incidents open now.
    pub incidents_open: usize,
    /// Stream clients connected now.
    pub clients: usize,
}
