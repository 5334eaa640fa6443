//! `CONFIG`, the read-only global the agent fills before the programs load:
//! per-kernel struct offsets, record layouts and the fork probe's settings.

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
    /// `task_struct.start_boottime` (`real_start_time` before 5.5), or
    /// [`ABSENT`].
    pub start_boottime: u32,
    /// `mm_struct.exe_file`, `file.f_inode`, `inode.i_ino`, `inode.i_sb`
    /// and `super_block.s_dev`: a task's executable as an [`ExeId`](crate::ExeId).
    pub mm_exe_file: u32,
    pub file_inode: u32,
    pub inode_ino: u32,
    pub inode_sb: u32,
    pub sb_dev: u32,
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
    /// 1: the probes write no record of a task outside the scope (the
    /// `SCOPE` map's verdict is [`SCOPE_OUT`](crate::SCOPE_OUT)), so work
    /// outside `--cgroup` never reaches the agent. Cgroup moves, OOM kills
    /// and hung tasks are written whatever the scope: they are rare, and
    /// the agent needs a move into the scope to start following a process.
    pub filter: u32,
}

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
            start_boottime: ABSENT,
            mm_exe_file: 0,
            file_inode: 0,
            inode_ino: 0,
            inode_sb: 0,
            sb_dev: 0,
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
            filter: 0,
        },
    };
}
