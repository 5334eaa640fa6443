//! Wire format between guard's eBPF programs and its agent.
//!
//! Every record in the `EVENTS` ring buffer starts with a [`Header`] whose
//! `kind` is one of [`EventKind`]; the agent reads the tag, checks the record
//! length against the struct for that kind, and copies it out. All structs are
//! `#[repr(C)]` and laid out so that they have **no implicit padding**: every
//! field is placed at a multiple of its alignment and every struct's size is a
//! multiple of 8. The `layout` tests below pin the sizes; a change here is a
//! change of the wire format on both sides at once.
#![no_std]

/// `task_struct.flags` bit of a kernel thread.
pub const PF_KTHREAD: u32 = 0x0020_0000;

/// Length of a task's `comm` (TASK_COMM_LEN), NUL included.
pub const COMM_LEN: usize = 16;
/// Bytes kept of a path (exec filename, cgroup path), NUL included. Longer
/// paths are cut and flagged (`len == PATH_LEN - 1`).
pub const PATH_LEN: usize = 256;

/// Number of slots in the per-CPU drop counter map: one per [`EventKind`]
/// value (slot 0 is unused).
pub const KIND_SLOTS: u32 = 16;

/// Kind tag of a ring-buffer record. Decoded with `TryFrom<u32>`; an unknown
/// value is an error, never a transmute.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    Fork = 1,
    Exec = 2,
    Exit = 3,
    OomKill = 4,
    HungTask = 5,
    CgroupAttach = 6,
    Unblocked = 7,
    Rss = 8,
    ReclaimStall = 9,
    Condemned = 10,
}

impl EventKind {
    pub const ALL: [EventKind; 10] = [
        EventKind::Fork,
        EventKind::Exec,
        EventKind::Exit,
        EventKind::OomKill,
        EventKind::HungTask,
        EventKind::CgroupAttach,
        EventKind::Unblocked,
        EventKind::Rss,
        EventKind::ReclaimStall,
        EventKind::Condemned,
    ];

    /// The name used on the command line and in the `kind` field of the output.
    pub const fn name(self) -> &'static str {
        match self {
            EventKind::Fork => "fork",
            EventKind::Exec => "exec",
            EventKind::Exit => "exit",
            EventKind::OomKill => "oom_kill",
            EventKind::HungTask => "hung_task",
            EventKind::CgroupAttach => "cgroup_attach",
            EventKind::Unblocked => "unblocked",
            EventKind::Rss => "rss",
            EventKind::ReclaimStall => "reclaim_stall",
            EventKind::Condemned => "condemned",
        }
    }
}

/// The tag did not name a known kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownKind(pub u32);

impl TryFrom<u32> for EventKind {
    type Error = UnknownKind;
    fn try_from(v: u32) -> Result<Self, Self::Error> {
        Ok(match v {
            1 => EventKind::Fork,
            2 => EventKind::Exec,
            3 => EventKind::Exit,
            4 => EventKind::OomKill,
            5 => EventKind::HungTask,
            6 => EventKind::CgroupAttach,
            7 => EventKind::Unblocked,
            8 => EventKind::Rss,
            9 => EventKind::ReclaimStall,
            10 => EventKind::Condemned,
            other => return Err(UnknownKind(other)),
        })
    }
}

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

/// Value of the `BLOCKED` map (task_struct address → slot): a task that
/// left the CPU in uninterruptible sleep and has not run since. 40 bytes, no
/// padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockedSlot {
    /// When it blocked (boot ns).
    pub since_ns: u64,
    pub pid: u32,
    pub tgid: u32,
    /// Its state as it blocked (see [`task_state`]).
    pub state: u32,
    /// Explicit padding (always 0), so the size is a multiple of 8.
    pub reserved: u32,
    pub comm: [u8; COMM_LEN],
}

/// Slots of the `OCCUPANCY` array: counters of `BLOCKED` entries by a hash
/// of their key, so that the switch-in path looks the hash map up only when
/// its slot says the task may be there (an inlined array load instead of a
/// hash lookup on almost every context switch).
pub const OCCUPANCY_SLOTS: u32 = 4096;

/// The `OCCUPANCY` slot of a task_struct address (Fibonacci hashing; task
/// structs sit kilobytes apart in their slab).
pub const fn occupancy_slot(task: u64) -> u32 {
    (task.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 52) as u32 & (OCCUPANCY_SLOTS - 1)
}

/// Capacity of the `BLOCKED` map: tasks in uninterruptible sleep at once.
/// A full map is counted (`DROPS[TRACKING_FULL_SLOT]`), never silent.
pub const BLOCKED_ENTRIES: u32 = 16384;
/// Capacity of the `REPORTED` map (task_struct address → `since_ns` of the
/// blocking the agent reported), which asks the kernel for an
/// [`UnblockedEvent`].
pub const REPORTED_ENTRIES: u32 = 4096;

/// Marks a field offset this kernel does not have.
pub const ABSENT: u32 = u32::MAX;

/// Byte offsets of the kernel struct members the programs read, resolved by
/// the agent from BTF (/sys/kernel/btf/vmlinux) at load time and handed over
/// as the `CONFIG` global. All `u32`: no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskOffsets {
    pub pid: u32,
    pub tgid: u32,
    pub comm: u32,
    pub flags: u32,
    pub exit_code: u32,
    pub real_parent: u32,
    pub signal: u32,
    pub cgroups: u32,
    /// `signal_struct.live` (an `atomic_t`).
    pub signal_live: u32,
    /// `linux_binprm.filename`.
    pub binprm_filename: u32,
    /// `css_set.dfl_cgrp`.
    pub css_set_dfl_cgrp: u32,
    /// `cgroup.kn`.
    pub cgroup_kn: u32,
    /// `kernfs_node.id`.
    pub kernfs_node_id: u32,
    /// `cgroup.root`.
    pub cgroup_root: u32,
    /// `cgroup_root.hierarchy_id`.
    pub root_hierarchy_id: u32,
    /// 1 when `sched_process_exit` passes `bool group_dead` as its second
    /// argument (6.16+); otherwise the program reads `signal->live`.
    pub exit_has_group_dead: u32,
    /// `task_struct.__state` (5.14+) or `task_struct.state` (a `long`
    /// before; its low 32 bits on little-endian), for kernels whose
    /// `sched_switch` lacks the `prev_state` argument.
    pub state: u32,
    /// 1 when `sched_switch` passes `unsigned int prev_state` (5.18+).
    pub switch_has_prev_state: u32,
    /// `task_struct.mm`.
    pub mm: u32,
    /// `mm_struct.arg_start` and `arg_end`.
    pub mm_arg_start: u32,
    pub mm_arg_end: u32,
    /// Explicit padding (always 0).
    pub reserved: u32,
}

/// Field offsets inside the `oom/mark_victim` record, from its tracefs
/// `format` file; [`ABSENT`] for fields this kernel lacks.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MarkVictimLayout {
    pub pid: u32,
    pub comm: u32,
    /// 1 when `comm` is a `__data_loc char[]` (6.x), 0 for `char[16]`.
    pub comm_is_data_loc: u32,
    pub total_vm: u32,
    pub anon_rss: u32,
    pub file_rss: u32,
    pub shmem_rss: u32,
    pub uid: u32,
    pub pgtables: u32,
    pub oom_score_adj: u32,
}

impl MarkVictimLayout {
    /// Every field absent: what a kernel without the tracepoint has.
    pub const NONE: Self = Self {
        pid: ABSENT,
        comm: ABSENT,
        comm_is_data_loc: 0,
        total_vm: ABSENT,
        anon_rss: ABSENT,
        file_rss: ABSENT,
        shmem_rss: ABSENT,
        uid: ABSENT,
        pgtables: ABSENT,
        oom_score_adj: ABSENT,
    };
}

impl Default for MarkVictimLayout {
    fn default() -> Self {
        Self::NONE
    }
}

/// What the memory programs need: offsets from BTF and the user's steps.
/// All `u32`: no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryProbe {
    /// `task_struct.mm`.
    pub task_mm: u32,
    /// `mm_struct.rss_stat`: an array of NR_MM_COUNTERS counters,
    /// `percpu_counter` (6.2+) or `atomic_long_t` (before).
    pub mm_rss_stat: u32,
    /// Size of one counter (`sizeof(struct percpu_counter)`, or 8).
    pub rss_stride: u32,
    /// Offset of the s64 count inside one counter.
    pub rss_count: u32,
    /// Page size in bytes.
    pub page_size: u32,
    /// An `rss` record each time resident memory crosses a multiple of this
    /// many pages.
    pub rss_step_pages: u32,
    /// A `reclaim_stall` record for a reclaim that took this long or more.
    pub reclaim_stall_us: u32,
    /// Explicit padding (always 0).
    pub reserved: u32,
}

/// Words of `mm_struct.rss_stat` the rss program copies in one read: enough
/// for four counters of up to 40 bytes each.
pub const RSS_STAT_WORDS: usize = 20;

/// The fork guard's kernel side: which processes the fork probe tags by
/// itself, how it finds a task's cgroup in the scope's hierarchy, and the
/// explosion rule it applies to each tagged subtree (see `ForkBudget`).
/// 8 + 12 × 4 bytes, no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForkGuardConfig {
    pub window_ns: u64,
    /// 1: tag each process subtree in scope at its first fork, and apply the
    /// rule to it. 0: only subtrees the agent tags are watched.
    pub enabled: u32,
    /// 1: no `--cgroup`: every cgroup is in scope (unless the `SCOPE` map
    /// says it is protected).
    pub all_cgroups: u32,
    /// `css_set.subsys[]` index of the scope hierarchy's controller (v1),
    /// or [`ABSENT`]: the task's v2 cgroup (`css_set.dfl_cgrp`).
    pub subsys_index: u32,
    /// `css_set.subsys`.
    pub css_set_subsys: u32,
    /// `cgroup_subsys_state.cgroup`.
    pub css_cgroup: u32,
    /// `cgroup_subsys_state.parent`.
    pub css_parent: u32,
    /// `cgroup.self` (the cgroup's own `cgroup_subsys_state`).
    pub cgroup_self: u32,
    pub max_births: u32,
    pub min_growth: u32,
    /// SIGKILL or SIGSTOP.
    pub signal: u32,
    /// Self-replication depth a subtree must show (see `ForkBudget`).
    pub min_depth: u32,
    /// Explicit padding (always 0).
    pub reserved: u32,
}

/// Values of the `SCOPE` map (cgroup kernfs id → verdict). The fork probe
/// walks up from a task's cgroup; the first listed one decides.
pub const SCOPE_IN: u32 = 1;
pub const SCOPE_PROTECTED: u32 = 2;
/// Cached verdict: neither (outside the scope).
pub const SCOPE_OUT: u32 = 3;
/// Levels of cgroup ancestry the fork probe walks.
pub const SCOPE_MAX_DEPTH: u32 = 16;
/// Capacities of the `SCOPE`, `SCOPE_CACHE`, `PROTECTED_PIDS` and
/// `PROTECTED_COMMS` maps.
pub const SCOPE_ENTRIES: u32 = 256;
pub const SCOPE_CACHE_ENTRIES: u32 = 4096;
pub const PROTECTED_PID_ENTRIES: u32 = 1024;
pub const PROTECTED_COMM_ENTRIES: u32 = 256;

/// Everything per-kernel the programs need, as one read-only global.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeConfig {
    pub task: TaskOffsets,
    pub mark_victim: MarkVictimLayout,
    pub memory: MemoryProbe,
    pub fork_guard: ForkGuardConfig,
}

impl ProbeConfig {
    /// The value compiled into the object; the agent always overrides it.
    pub const UNSET: Self = Self {
        task: TaskOffsets {
            pid: 0,
            tgid: 0,
            comm: 0,
            flags: 0,
            exit_code: 0,
            real_parent: 0,
            signal: 0,
            cgroups: 0,
            signal_live: 0,
            binprm_filename: 0,
            css_set_dfl_cgrp: 0,
            cgroup_kn: 0,
            kernfs_node_id: 0,
            cgroup_root: 0,
            root_hierarchy_id: 0,
            exit_has_group_dead: 0,
            state: 0,
            switch_has_prev_state: 0,
            mm: 0,
            mm_arg_start: 0,
            mm_arg_end: 0,
            reserved: 0,
        },
        mark_victim: MarkVictimLayout::NONE,
        memory: MemoryProbe {
            task_mm: 0,
            mm_rss_stat: 0,
            rss_stride: 0,
            rss_count: 0,
            page_size: 4096,
            rss_step_pages: 0,
            reclaim_stall_us: 0,
            reserved: 0,
        },
        fork_guard: ForkGuardConfig {
            window_ns: 0,
            enabled: 0,
            all_cgroups: 0,
            subsys_index: ABSENT,
            css_set_subsys: 0,
            css_cgroup: 0,
            css_parent: 0,
            cgroup_self: 0,
            max_births: 0,
            min_growth: 0,
            signal: 0,
            min_depth: 0,
            reserved: 0,
        },
    };
}

/// Default size of the `EVENTS` ring buffer (a power of two, a multiple of
/// the page size); the agent's `--ring-buffer-mib` overrides it.
pub const DEFAULT_RING_BYTES: u32 = 16 << 20;

/// Capacity of the `LINEAGE` map (tgid → tag): live members of subtrees
/// being acted on.
pub const LINEAGE_ENTRIES: u32 = 65536;
/// Capacity of the `RSS_STEP` map (tgid → the rss step last reported) and
/// of `RECLAIM_BEGIN` (pid → when its reclaim began).
pub const RSS_ENTRIES: u32 = 65536;
pub const RECLAIM_ENTRIES: u32 = 16384;

/// Value of the `BUDGETS` map (lineage tag → budget): the fork guard's
/// explosion rule, enforced by the fork probe for a subtree the agent
/// watches (its cgroup is a quarter of the way to the rule). When, within
/// one window, the subtree's births reach `max_births` while its live count
/// grew by `min_growth` from its lowest, the probe condemns the tag itself,
/// so containment does not wait for the agent to be scheduled. 56 bytes, no
/// padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForkBudget {
    /// Start of the current (tumbling) window, boot ns.
    pub window_start_ns: u64,
    pub window_ns: u64,
    /// Births in the current window.
    pub births: u64,
    /// Live members now (an i64 in two's complement: members the agent
    /// tagged late are not counted in, but their exits are).
    pub live: u64,
    /// Fewest live members in the current window (i64, as `live`).
    pub min_live: u64,
    pub max_births: u32,
    pub min_growth: u32,
    /// The signal to condemn the tag with (SIGKILL or SIGSTOP).
    pub signal: u32,
    /// A bomb replicates itself: the rule counts only births this many
    /// generations deep in copies of one program (each forked by the one
    /// before, with no exec into another program between them), or in
    /// threads started by threads. A wide build's children exec compilers
    /// and tools: they are 1 deep.
    pub min_depth: u32,
    /// Births of the current window at least `min_depth` deep: the rule
    /// needs half of `max_births` among them.
    pub deep_births: u32,
    /// Explicit padding (always 0).
    pub reserved: u32,
}

/// Capacity of the `DEPTH` map (tgid, or tid for a thread → the
/// self-replication depth of a member of a tagged subtree).
pub const DEPTH_ENTRIES: u32 = 65536;

/// Capacity of the `BUDGETS` map (least recently used entries go first:
/// the fork probe makes one per subtree it tags).
pub const BUDGET_ENTRIES: u32 = 16384;

/// The one kfunc call in guard's programs, `bpf_send_signal_task` (6.13+),
/// is written as raw instruction bytes (aya 0.14 cannot relocate extern
/// kfunc symbols): a call (code 0x85) with src_reg 2 (`BPF_PSEUDO_KFUNC_CALL`)
/// and this marker as its immediate. The loader replaces the marker with the
/// kfunc's BTF id, or the whole instruction with `r0 = 0` on kernels without
/// the kfunc. These are the instruction's 8 bytes, little-endian.
pub const KFUNC_SIGNAL_TASK_CALL: [u8; 8] = [0x85, 0x20, 0x00, 0x00, 0x6b, 0x66, 0x6e, 0x63];

/// Capacity of the `CONDEMNED` map (tag → signal).
pub const CONDEMNED_ENTRIES: u32 = 256;

/// Slots of the per-CPU `DROPS` map: `[kind]` counts records lost because the
/// ring buffer was full, `[KIND_SLOTS + kind]` records discarded because a
/// kernel read failed, `[TRACKING_FULL_SLOT]` blocked tasks not tracked
/// because the `BLOCKED` map was full.
pub const DROP_SLOTS: u32 = 2 * KIND_SLOTS + 1;
/// See [`DROP_SLOTS`].
pub const TRACKING_FULL_SLOT: u32 = 2 * KIND_SLOTS;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type below is `#[repr(C)]`, made only of integers and
    // byte arrays, with no padding (pinned by the layout tests), so any bit
    // pattern is a valid value.
    unsafe impl aya::Pod for super::ProbeConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::BlockedSlot {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ForkBudget {}
}

#[cfg(test)]
mod layout {
    use core::mem::size_of;

    use super::*;

    #[test]
    fn sizes_have_no_padding() {
        assert_eq!(size_of::<Header>(), 16);
        assert_eq!(size_of::<ForkEvent>(), 16 + 6 * 4 + 8 + 2 * COMM_LEN);
        assert_eq!(
            size_of::<ExecEvent>(),
            16 + 6 * 4 + COMM_LEN + PATH_LEN + ARGS_LEN
        );
        assert_eq!(size_of::<ExitEvent>(), 16 + 6 * 4 + COMM_LEN);
        assert_eq!(
            size_of::<OomKillEvent>(),
            16 + 4 * 4 + 5 * 8 + 2 * 4 + COMM_LEN
        );
        assert_eq!(size_of::<HungTaskEvent>(), 16 + 2 * 4 + COMM_LEN);
        assert_eq!(size_of::<CgroupAttachEvent>(), 16 + 4 * 4 + PATH_LEN);
        assert_eq!(size_of::<UnblockedEvent>(), 16 + 4 * 4 + 2 * 8 + COMM_LEN);
        assert_eq!(size_of::<BlockedSlot>(), 8 + 4 * 4 + COMM_LEN);
        assert_eq!(size_of::<TaskOffsets>(), 22 * 4);
        assert_eq!(size_of::<RssEvent>(), 16 + 4 * 4 + 4 * 8 + COMM_LEN);
        assert_eq!(
            size_of::<ReclaimStallEvent>(),
            16 + 2 * 4 + 2 * 8 + COMM_LEN
        );
        assert_eq!(size_of::<MemoryProbe>(), 8 * 4);
        assert_eq!(size_of::<ForkBudget>(), 5 * 8 + 6 * 4);
        assert_eq!(size_of::<MarkVictimLayout>(), 10 * 4);
        assert_eq!(size_of::<CondemnedEvent>(), 16 + 4 * 8 + 4 * 4);
        assert_eq!(size_of::<ForkGuardConfig>(), 8 + 12 * 4);
        assert_eq!(
            size_of::<ProbeConfig>(),
            size_of::<TaskOffsets>()
                + size_of::<MarkVictimLayout>()
                + size_of::<MemoryProbe>()
                + size_of::<ForkGuardConfig>()
        );
    }

    #[test]
    fn occupancy_slots_spread_task_addresses() {
        // Task structs ~10 KiB apart in a slab land in distinct slots.
        let base = 0xffff_8880_0400_0000u64;
        let mut seen = [false; OCCUPANCY_SLOTS as usize];
        let mut distinct = 0;
        for i in 0..1000u64 {
            let slot = occupancy_slot(base + i * 10_240) as usize;
            assert!(slot < OCCUPANCY_SLOTS as usize);
            if !seen[slot] {
                seen[slot] = true;
                distinct += 1;
            }
        }
        assert!(distinct > 850, "{distinct} distinct slots of 1000");
    }

    #[test]
    fn kind_tags_round_trip() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::try_from(kind as u32), Ok(kind));
            assert!((kind as u32) < KIND_SLOTS);
        }
        assert_eq!(EventKind::try_from(0), Err(UnknownKind(0)));
        assert_eq!(EventKind::try_from(11), Err(UnknownKind(11)));
    }

    #[test]
    fn auto_tags_carry_their_root() {
        let tag = auto_tag(4_194_303, 123_456_789_000);
        assert_eq!(auto_tag_root(tag), Some(4_194_303));
        assert_ne!(tag & AUTO_TAG, 0);
        assert_eq!(auto_tag_root(auto_tag(77, u64::MAX)), Some(77));
        assert_ne!(auto_tag(77, 1 << 30), auto_tag(77, 2 << 30));
        assert_eq!(auto_tag_root(4242), None);
    }
}
