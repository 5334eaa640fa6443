//! Values, capacities and slots of the maps the programs share with the
//! agent: blocked tasks, fork budgets, scope verdicts, losses.

use crate::*;

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

/// Values of the `SCOPE` map (cgroup kernfs id → verdict). The fork probe
/// walks up from a task's cgroup; the first listed one decides.
pub const SCOPE_IN: u32 = 1;
pub const SCOPE_PROTECTED: u32 = 2;
/// Cached verdict: neither (outside the scope).
pub const SCOPE_OUT: u32 = 3;
/// In the scope, with a softer fork action than the probe's own (a
/// `[[policy]]`): its budgets refuse only, signalling nobody...
pub const SCOPE_IN_REFUSE: u32 = 4;
/// ...or stop (SIGSTOP) where the probe's own action kills.
pub const SCOPE_IN_STOP: u32 = 5;

/// Whether a scope verdict puts a cgroup in the scope.
pub const fn scope_in(verdict: u32) -> bool {
    matches!(verdict, SCOPE_IN | SCOPE_IN_REFUSE | SCOPE_IN_STOP)
}

/// The signal a budget made in a cgroup of this verdict condemns with:
/// the probe's own (`default`), or a softer one (0: refuse only).
pub const fn scope_signal(verdict: u32, default: u32) -> u32 {
    match verdict {
        SCOPE_IN_REFUSE => 0,
        SCOPE_IN_STOP => 19,
        _ => default,
    }
}
/// Levels of cgroup ancestry the fork probe walks.
pub const SCOPE_MAX_DEPTH: u32 = 16;
/// Capacities of the `SCOPE`, `SCOPE_CACHE`, `PROTECTED_PIDS` and
/// `PROTECTED_EXES` maps.
pub const SCOPE_ENTRIES: u32 = 256;
pub const SCOPE_CACHE_ENTRIES: u32 = 4096;
pub const PROTECTED_PID_ENTRIES: u32 = 1024;
pub const PROTECTED_EXE_ENTRIES: u32 = 1024;

/// Key of the `PROTECTED_EXES` map: an executable file as the kernel knows
/// it (`mm->exe_file->f_inode`), which no ordinary user can forge, unlike a
/// comm or an argv[0]. 16 bytes, no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExeId {
    /// `inode.i_ino`.
    pub ino: u64,
    /// `super_block.s_dev`, in the kernel's encoding (major << 20 | minor),
    /// not `stat`'s (see `ExeId::from_stat`).
    pub dev: u32,
    /// Explicit padding (always 0).
    pub reserved: u32,
}

impl ExeId {
    /// From `stat`'s `st_dev` (glibc's encoding) and `st_ino`.
    pub const fn from_stat(st_dev: u64, st_ino: u64) -> Self {
        // glibc's gnu_dev_major / gnu_dev_minor.
        let major = ((st_dev >> 8) & 0xfff) | ((st_dev >> 32) & !0xfff);
        let minor = (st_dev & 0xff) | ((st_dev >> 12) & !0xff);
        Self {
            ino: st_ino,
            dev: ((major << 20) | (minor & 0xf_ffff)) as u32,
            reserved: 0,
        }
    }
}

/// Default size of the `EVENTS` ring buffer (a power of two, a multiple of
/// the page size); the agent's `--ring-buffer-mib` overrides it. The agent
/// maps it twice (the kernel's wrap-around mapping), so it counts double in
/// the agent's RSS. 8 MiB holds 55,000 forks' fork and exit records (152
/// bytes), or 14 s of a build running 1,000 programs a second (600 bytes
/// each: fork, exec with its arguments, exit) with the agent not reading at
/// all; it reads every 2 ms.
pub const DEFAULT_RING_BYTES: u32 = 8 << 20;

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

/// Value of the `REFUSALS` map (lineage tag → refusal): a tag whose
/// members' forks the LSM program refuses (`task_alloc` fails with
/// EAGAIN), with what it refused so far. The agent inserts it zeroed (a
/// `refuse` action, and before any `stop` or `kill`), the fork probe when it
/// condemns a subtree by itself; the LSM program counts; removing it lifts
/// the refusal. 24 bytes, no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Refusal {
    /// Forks and clones refused so far (threads included).
    pub refused: u64,
    /// When the last one was refused (boot ns; 0: none yet).
    pub last_ns: u64,
    /// Members born since the refusal was written (counted by the fork
    /// probe): forks that had passed the hook before it, still copying
    /// (under load a fork can take milliseconds between the hook and its
    /// completion); or, where the kernel cannot refuse, every birth.
    pub slipped: u64,
}

/// Capacity of the `REFUSALS` map: as many as can be condemned.
pub const REFUSAL_ENTRIES: u32 = CONDEMNED_ENTRIES;

/// The errno a refused fork fails with: EAGAIN, what pids.max and
/// RLIMIT_NPROC return, which programs already handle.
pub const REFUSED_ERRNO: i32 = 11;

/// Slots of the per-CPU `DROPS` map: `[kind]` counts records lost because the
/// ring buffer was full, `[KIND_SLOTS + kind]` records discarded because a
/// kernel read failed, `[TRACKING_FULL_SLOT]` blocked tasks not tracked
/// because the `BLOCKED` map was full.
pub const DROP_SLOTS: u32 = 2 * KIND_SLOTS + 1;
/// See [`DROP_SLOTS`].
pub const TRACKING_FULL_SLOT: u32 = 2 * KIND_SLOTS;

#[cfg(test)]
mod exe_id {
    use super::ExeId;

    #[test]
    fn stat_devices_become_the_kernels_encoding() {
        // 8:1 (sda1) is 0x801 to stat, (8 << 20) | 1 to the kernel.
        assert_eq!(ExeId::from_stat(0x801, 7).dev, (8 << 20) | 1);
        // 259:3 (nvme0n1p3): major above 255.
        assert_eq!(ExeId::from_stat(0x10303, 7).dev, (259 << 20) | 3);
        // 0:25 (an overlay or tmpfs).
        assert_eq!(ExeId::from_stat(25, 9).dev, 25);
        // Minor 300 spills into stat's high bits.
        assert_eq!(
            ExeId::from_stat((300 & 0xff) | ((300 & !0xff) << 12) | (7 << 8), 1).dev,
            (7 << 20) | 300
        );
    }
}
