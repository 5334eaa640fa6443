//! The event records' types: what `Output::event` writes per kernel event.
//!
//! The writer itself is hand-rolled (`JsonObject`): it runs for every event
//! on the host, and formats straight from the decoded event into one
//! buffer without building a value (a few hundred ns of the ~5 µs per
//! fork). These types are the description it is held to: the schema is
//! derived from them, and a unit test (`output::tests`) validates the
//! writer's output for every kind against that schema, which allows no
//! field they do not name and requires every one they do.

use schemars::JsonSchema;
use serde::Serialize;

use super::record::PodFields;

/// What every event says of the task it is about.
#[derive(Serialize, JsonSchema)]
pub struct Subject {
    /// The task (thread) id.
    pub pid: u32,
    /// Its process id.
    pub tgid: u32,
    /// Its name (`null` when unknown).
    pub comm: Option<String>,
    /// Its parent process, when known.
    pub ppid: Option<u32>,
    pub parent_comm: Option<String>,
    /// Its cgroup directory (in the hierarchy events show; see
    /// docs/schema.md).
    pub cgroup: Option<String>,
    /// In a Kubernetes pod: the pod, container and QoS class.
    #[serde(flatten)]
    pub pod: Option<PodFields>,
}

/// A task was created (a process, or with `thread: true` a thread).
#[derive(Serialize, JsonSchema)]
pub struct Fork {
    #[serde(flatten)]
    pub subject: Subject,
    /// The forking task and its process.
    pub parent_pid: u32,
    pub parent_tgid: u32,
    /// A new thread of `parent_tgid`, not a new process.
    pub thread: bool,
    pub kernel_thread: bool,
}

/// A process ran a new program.
#[derive(Serialize, JsonSchema)]
pub struct Exec {
    #[serde(flatten)]
    pub subject: Subject,
    /// As passed to execve, 255 bytes at most.
    pub filename: String,
    pub filename_truncated: bool,
    /// The new image's arguments, empty ones kept, from the first bytes;
    /// `null` when unreadable.
    pub cmdline: Option<Vec<String>>,
    /// The last argument is cut.
    pub cmdline_truncated: bool,
    pub old_pid: u32,
}

/// A task ended (`group_dead`: its process ended).
#[derive(Serialize, JsonSchema)]
pub struct Exit {
    #[serde(flatten)]
    pub subject: Subject,
    /// Its exit code, or `null` when a signal ended it.
    pub exit_code: Option<i32>,
    /// The signal's name, or `null`.
    pub signal: Option<String>,
    pub core_dumped: bool,
    /// False: one thread of a living process ended.
    pub group_dead: bool,
    pub kernel_thread: bool,
    /// How long the process lived, when known.
    pub age_ns: Option<u64>,
}

/// The kernel's OOM killer chose a victim (the subject). Fields are `null`
/// on kernels whose `mark_victim` tracepoint lacks them.
#[derive(Serialize, JsonSchema)]
pub struct OomKill {
    #[serde(flatten)]
    pub subject: Subject,
    pub total_vm_kb: Option<u64>,
    pub anon_rss_kb: Option<u64>,
    pub file_rss_kb: Option<u64>,
    pub shmem_rss_kb: Option<u64>,
    pub pgtables_kb: Option<u64>,
    pub oom_score_adj: Option<i64>,
    pub uid: Option<u32>,
    /// The task whose allocation ran the OOM killer.
    pub trigger_pid: u32,
    pub trigger_tgid: u32,
    /// The victim's memory cgroup (whichever hierarchy `cgroup` shows).
    pub memory_cgroup: Option<String>,
}

/// The kernel's hung-task detector reported the subject.
#[derive(Serialize, JsonSchema)]
pub struct HungTask {
    #[serde(flatten)]
    pub subject: Subject,
    /// How long before khungtaskd guard reported the task `blocked`
    /// (`null`: it did not).
    pub guard_lead_ms: Option<u64>,
}

/// A task moved into another cgroup (`cgroup` is its new one).
#[derive(Serialize, JsonSchema)]
pub struct CgroupAttach {
    #[serde(flatten)]
    pub subject: Subject,
    pub hierarchy_id: u32,
    /// The path as the kernel names it.
    pub path: String,
}

/// A task guard reported `blocked` runs again.
#[derive(Serialize, JsonSchema)]
pub struct Unblocked {
    #[serde(flatten)]
    pub subject: Subject,
    /// When it blocked (boot ns).
    pub since_ns: u64,
    /// Until it was switched in again.
    pub blocked_ms: u64,
    pub killable: bool,
}

/// A process's anonymous + shmem memory crossed an `--rss-step-mib` step
/// (up or down). The mm's counters may lag by a few hundred KiB.
#[derive(Serialize, JsonSchema)]
pub struct Rss {
    #[serde(flatten)]
    pub subject: Subject,
    pub step: u64,
    /// `null`: first seen.
    pub previous_step: Option<u64>,
    pub rss_bytes: u64,
    pub anon_bytes: u64,
    pub file_bytes: u64,
    pub shmem_bytes: u64,
    pub swap_bytes: u64,
}

/// A task stalled in direct or memory-cgroup reclaim for
/// `--reclaim-stall-ms` or more.
#[derive(Serialize, JsonSchema)]
pub struct ReclaimStall {
    #[serde(flatten)]
    pub subject: Subject,
    pub stall_us: u64,
    pub nr_reclaimed: u64,
}

/// The fork probe condemned a subtree on its own budget; the subject is
/// the member whose fork met the rule.
#[derive(Serialize, JsonSchema)]
pub struct Condemned {
    #[serde(flatten)]
    pub subject: Subject,
    pub tag: u64,
    /// The subtree's root, when the probe tagged it.
    pub root_tgid: Option<u32>,
    pub births: u64,
    pub growth: u64,
    /// Of the births, self-copies.
    pub deep_births: u64,
    pub window_ms: u64,
    /// What members that fork get.
    pub signal: String,
}
