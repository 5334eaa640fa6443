//! The records of the `EVENTS` ring buffer: the kind tag, the header every
//! record starts with, one struct per kind, and the values their fields take.

use crate::*;

/// Declares [`EventKind`] from one list: each kind's tag value and its
/// name in the output, once. The enum, `ALL`, `name` and `TryFrom<u32>`
/// come from it, so a new probe's kind is one line here (plus its record
/// struct below, one decode arm and one record type in the agent, whose
/// exhaustive matches the compiler holds to the list).
macro_rules! event_kinds {
    ($($(#[$doc:meta])* $variant:ident = $value:literal => $name:literal,)*) => {
        /// Kind tag of a ring-buffer record. Decoded with `TryFrom<u32>`; an
        /// unknown value is an error, never a transmute.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum EventKind {
            $($(#[$doc])* $variant = $value,)*
        }

        impl EventKind {
            /// Every kind, in tag order.
            pub const ALL: [EventKind; [$($value),*].len()] = [$(EventKind::$variant),*];

            /// The name used on the command line and in the `kind` field of
            /// the output.
            pub const fn name(self) -> &'static str {
                match self {
                    $(EventKind::$variant => $name,)*
                }
            }
        }

        impl TryFrom<u32> for EventKind {
            type Error = UnknownKind;
            fn try_from(v: u32) -> Result<Self, Self::Error> {
                match v {
                    $($value => Ok(EventKind::$variant),)*
                    other => Err(UnknownKind(other)),
                }
            }
        }
    };
}

event_kinds! {
    /// `sched_process_fork`: a task created a task.
    Fork = 1 => "fork",
    /// `sched_process_exec`: a process ran a new program.
    Exec = 2 => "exec",
    /// `sched_process_exit`: a task ended.
    Exit = 3 => "exit",
    /// `mark_victim`: the OOM killer chose a victim.
    OomKill = 4 => "oom_kill",
    /// `sched_process_hang`: khungtaskd reported a task.
    HungTask = 5 => "hung_task",
    /// `cgroup_attach_task` / `cgroup_transfer_tasks`: a task moved.
    CgroupAttach = 6 => "cgroup_attach",
    /// `sched_switch`: a task reported blocked runs again.
    Unblocked = 7 => "unblocked",
    /// `rss_stat`: a process's memory crossed a step.
    Rss = 8 => "rss",
    /// `mm_vmscan_*_reclaim_end`: a task stalled in reclaim.
    ReclaimStall = 9 => "reclaim_stall",
    /// The fork probe condemned a subtree on its budget.
    Condemned = 10 => "condemned",
}

/// The tag did not name a known kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownKind(pub u32);

/// First 16 bytes of every record.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// An [`EventKind`] value.
    pub kind: u32,
    /// CPU the probe ran on.
    pub cpu: u32,
    /// `bpf_ktime_get_boot_ns()`: nanoseconds since boot, suspend included
    /// (CLOCK_BOOTTIME).
    pub boot_ns: u64,
}

/// `sched_process_fork`: a task created a task. A thread when
/// `child_tgid == parent_tgid` (CLONE_THREAD), otherwise a new process.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForkEvent {
    pub header: Header,
    pub parent_pid: u32,
    pub parent_tgid: u32,
    pub child_pid: u32,
    pub child_tgid: u32,
    /// tgid of the child's `real_parent` (differs from `parent_tgid` with
    /// CLONE_PARENT or CLONE_THREAD).
    pub child_ppid: u32,
    /// The child's `task_struct.flags` (PF_KTHREAD marks a kernel thread).
    pub child_flags: u32,
    /// The child's cgroup v2 id (kernfs node id of its default-hierarchy
    /// cgroup); 0 when it could not be read.
    pub child_cgroup_id: u64,
    pub parent_comm: [u8; COMM_LEN],
    pub child_comm: [u8; COMM_LEN],
}

/// The fork probe condemned a subtree: its births met the explosion rule
/// (see [`ForkBudget`]). From this record on, its members are signalled as
/// they fork, and so is each child they leave; the agent signals the rest.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CondemnedEvent {
    pub header: Header,
    /// The subtree's lineage tag (see [`auto_tag_root`]).
    pub tag: u64,
    /// Births in the window that met the rule.
    pub births: u64,
    /// Growth of the live count from its lowest in that window.
    pub growth: u64,
    pub window_ns: u64,
    /// The member whose fork met the rule.
    pub forker_tgid: u32,
    /// The signal the tag was condemned with.
    pub signal: u32,
    /// Births of the window at least `min_depth` deep (see `ForkBudget`).
    pub deep_births: u32,
    /// Explicit padding (always 0).
    pub reserved: u32,
}

/// Bit 63 marks a tag the fork probe gave a subtree by itself (at its first
/// fork in scope): then bits 0–21 are the root's tgid and bits 22–62 the
/// time it was tagged, in 2^20 ns. The agent's own tags are small numbers.
pub const AUTO_TAG: u64 = 1 << 63;

/// Bits of an automatic tag holding the root's tgid (pid_max is at most
/// 2^22).
pub const AUTO_TAG_TGID_BITS: u32 = 22;

pub const fn auto_tag(root_tgid: u32, now_ns: u64) -> u64 {
    let tgid_mask = (1u64 << AUTO_TAG_TGID_BITS) - 1;
    AUTO_TAG
        | (((now_ns >> 20) << AUTO_TAG_TGID_BITS) & !AUTO_TAG & !tgid_mask)
        | (root_tgid as u64 & tgid_mask)
}

/// The root tgid of an automatic tag; `None` for the agent's tags.
pub const fn auto_tag_root(tag: u64) -> Option<u32> {
    if tag & AUTO_TAG == 0 {
        return None;
    }
    Some((tag & ((1u64 << AUTO_TAG_TGID_BITS) - 1)) as u32)
}

/// `sched_process_exec`: a task replaced its program.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecEvent {
    pub header: Header,
    pub pid: u32,
    pub tgid: u32,
    /// The pid before exec (differs when a non-leader thread execs).
    pub old_pid: u32,
    /// Bytes of `filename` before its NUL.
    pub filename_len: u32,
    /// Bytes of `args` copied (0: unreadable).
    pub args_len: u32,
    /// Bytes of the argument block beyond `args` (cut).
    pub args_cut: u32,
    /// comm after exec (the new program's basename, cut to 15 bytes).
    pub comm: [u8; COMM_LEN],
    pub filename: [u8; PATH_LEN],
    /// The start of the new argument block (`mm->arg_start..arg_end`): the
    /// arguments, each ended by a NUL, as /proc/PID/cmdline shows them.
    pub args: [u8; ARGS_LEN],
}

/// Bytes of the argument block an `exec` record carries.
pub const ARGS_LEN: usize = 128;

/// `sched_process_exit`: a task is exiting.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitEvent {
    pub header: Header,
    pub pid: u32,
    pub tgid: u32,
    /// tgid of `real_parent` at exit.
    pub ppid: u32,
    /// `task_struct.exit_code` as the kernel set it before the tracepoint:
    /// wait(2) status layout, `(code << 8) | signal | 0x80 if core dumped`.
    pub exit_code: u32,
    /// `task_struct.flags`.
    pub flags: u32,
    /// 1 when this was the last live thread of its group (the process is gone).
    pub group_dead: u32,
    pub comm: [u8; COMM_LEN],
}

/// Bits of [`OomKillEvent::present`]: which optional fields this kernel's
/// `mark_victim` tracepoint carries (older kernels give only the pid).
pub mod oom_field {
    pub const COMM: u32 = 1 << 0;
    pub const TOTAL_VM: u32 = 1 << 1;
    pub const ANON_RSS: u32 = 1 << 2;
    pub const FILE_RSS: u32 = 1 << 3;
    pub const SHMEM_RSS: u32 = 1 << 4;
    pub const UID: u32 = 1 << 5;
    pub const PGTABLES: u32 = 1 << 6;
    pub const OOM_SCORE_ADJ: u32 = 1 << 7;
}

/// `oom/mark_victim`: the OOM killer chose a victim.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OomKillEvent {
    pub header: Header,
    /// Victim pid (a tgid: the OOM killer picks processes).
    pub pid: u32,
    pub uid: u32,
    /// The task whose allocation ran the OOM killer.
    pub trigger_pid: u32,
    pub trigger_tgid: u32,
    pub total_vm_kb: u64,
    pub anon_rss_kb: u64,
    pub file_rss_kb: u64,
    pub shmem_rss_kb: u64,
    pub pgtables_kb: u64,
    pub oom_score_adj: i32,
    /// [`oom_field`] bits: which of the fields above are real.
    pub present: u32,
    pub comm: [u8; COMM_LEN],
}

/// `sched/sched_process_hang`: khungtaskd found a task blocked for longer
/// than `kernel.hung_task_timeout_secs`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HungTaskEvent {
    pub header: Header,
    pub pid: u32,
    pub tgid: u32,
    pub comm: [u8; COMM_LEN],
}

/// `cgroup/cgroup_attach_task` and `cgroup/cgroup_transfer_tasks`: a task
/// moved to another cgroup of one hierarchy.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupAttachEvent {
    pub header: Header,
    pub pid: u32,
    pub tgid: u32,
    /// `cgroup_root.hierarchy_id`: 0 is the v2 (unified) hierarchy, v1
    /// hierarchies have the ids shown in the first column of /proc/PID/cgroup.
    pub hierarchy_id: u32,
    /// Bytes of `path` before its NUL.
    pub path_len: u32,
    /// The moving task's parent process and `task_struct.flags`: with
    /// `--cgroup` the probes leave out tasks outside it, so a process that
    /// moves in is first heard of here, and may be gone from /proc before
    /// the agent reads it.
    pub ppid: u32,
    pub flags: u32,
    /// When the task started, boot ns (`task_struct.start_boottime`; 0
    /// when this kernel's BTF has no such field).
    pub start_ns: u64,
    pub comm: [u8; COMM_LEN],
    /// The destination cgroup's path inside its hierarchy, e.g. `/a/b`.
    pub path: [u8; PATH_LEN],
}

/// A task that guard reported as blocked (see [`BlockedSlot`]) ran again:
/// written by the `sched_switch` program when it switches the task in.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnblockedEvent {
    pub header: Header,
    pub pid: u32,
    pub tgid: u32,
    /// The task's state when it blocked (`prev_state`, see [`task_state`]).
    pub state: u32,
    /// Explicit padding (always 0), so `since_ns` sits at a multiple of 8.
    pub reserved: u32,
    /// When it blocked (boot ns).
    pub since_ns: u64,
    /// How long it was off the CPU: from blocking to running again.
    pub blocked_ns: u64,
    pub comm: [u8; COMM_LEN],
}

/// `kmem/rss_stat`: a process's resident memory crossed a step (up or
/// down) of `MemoryProbe::rss_step_pages`. Figures are the mm's counters as
/// the kernel keeps them (per-CPU batched: they may lag by a few hundred KiB).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RssEvent {
    pub header: Header,
    pub pid: u32,
    pub tgid: u32,
    /// Resident bytes / step: the step it is in now.
    pub step: u32,
    /// The step it was in before (`u32::MAX`: first seen).
    pub previous_step: u32,
    pub file_bytes: u64,
    pub anon_bytes: u64,
    pub shmem_bytes: u64,
    pub swap_bytes: u64,
    pub comm: [u8; COMM_LEN],
}

/// `vmscan/mm_vmscan_{direct,memcg}_reclaim_{begin,end}`: a task stalled in
/// reclaim for at least `MemoryProbe::reclaim_stall_us`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReclaimStallEvent {
    pub header: Header,
    pub pid: u32,
    pub tgid: u32,
    pub stall_ns: u64,
    pub nr_reclaimed: u64,
    pub comm: [u8; COMM_LEN],
}

/// Bits of a task's state (`task_struct.__state`, the `prev_state` argument
/// of `sched_switch`), unchanged since 4.14 (include/linux/sched.h).
pub mod task_state {
    pub const UNINTERRUPTIBLE: u32 = 0x0002;
    /// With UNINTERRUPTIBLE: TASK_KILLABLE, a fatal signal ends the wait
    /// (vfork parents, NFS, `mutex_lock_killable`); khungtaskd skips these.
    pub const WAKEKILL: u32 = 0x0100;
    /// With UNINTERRUPTIBLE: TASK_IDLE, an idle kernel thread waiting for
    /// work; not a blocked task at all (khungtaskd skips these too).
    pub const NOLOAD: u32 = 0x0400;
}
