//! Every map the programs share with each other and with the agent, and
//! the `CONFIG` global: one place to see the kernel side's state.

use aya_ebpf::macros::map;
use aya_ebpf::maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf};
use guard_common::{
    BLOCKED_ENTRIES, BUDGET_ENTRIES, BlockedSlot, CONDEMNED_ENTRIES, DEFAULT_RING_BYTES,
    DEPTH_ENTRIES, DROP_SLOTS, ExeId, ExecEvent, ForkBudget, LINEAGE_ENTRIES, OCCUPANCY_SLOTS,
    PROTECTED_EXE_ENTRIES, PROTECTED_PID_ENTRIES, ProbeConfig, RECLAIM_ENTRIES, REFUSAL_ENTRIES,
    REPORTED_ENTRIES, RSS_ENTRIES, Refusal, SCOPE_CACHE_ENTRIES, SCOPE_ENTRIES,
};

/// Per-kernel offsets and layouts, overridden by the agent at load time
/// (`EbpfLoader::override_global`); read with `read_volatile` so the compiler
/// cannot fold the compiled-in placeholder.
#[unsafe(no_mangle)]
pub(crate) static CONFIG: ProbeConfig = ProbeConfig::UNSET;

#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

#[map]
pub(crate) static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DROP_SLOTS, 0);

/// Lineage tags: tgid → tag. Set by the agent on the members of a subtree
/// it acts on; inherited at fork (so members born while it acts carry the
/// tag, whoever adopts them later), removed at exit.
#[map]
pub(crate) static LINEAGE: HashMap<u32, u64> = HashMap::with_max_entries(LINEAGE_ENTRIES, 0);

/// Members of tagged subtrees → their self-replication depth: how many
/// generations of one program forked each other down to them (absent: 0,
/// the process exec'd a program other than its parent's), keyed by tgid;
/// for a thread, keyed by its tid, how many threads started threads down
/// to it. Set at fork, cleared at an exec into another program and at
/// exit.
#[map]
pub(crate) static DEPTH: HashMap<u32, u32> = HashMap::with_max_entries(DEPTH_ENTRIES, 0);

/// Condemned tags → signal. A process whose tag is condemned gets the signal
/// the moment it tries to fork: the subtree cannot grow while the agent
/// signals its members.
#[map]
pub(crate) static CONDEMNED: HashMap<u64, u32> = HashMap::with_max_entries(CONDEMNED_ENTRIES, 0);

/// Refused tags → what was refused (see `Refusal`): the LSM program fails
/// every fork and clone of their members with EAGAIN. A condemned tag has
/// one too (the agent, or the fork probe, inserts it with the
/// condemnation), so that a condemned member's fork fails as it is
/// signalled, instead of leaving a child behind.
#[map]
pub(crate) static REFUSALS: HashMap<u64, Refusal> = HashMap::with_max_entries(REFUSAL_ENTRIES, 0);

/// Tasks in uninterruptible sleep: task_struct address → who, when and how
/// they blocked. Written by `sched_switch` as a task leaves the CPU in that
/// state, removed when it is switched in again; the agent reads it every
/// sample tick. Keyed by the task's address, which `sched_switch` hands over
/// as an argument, so the switch-in path reads no kernel memory (a task
/// cannot exit, and its address be reused, without running first).
#[map]
pub(crate) static BLOCKED: HashMap<u64, BlockedSlot> =
    HashMap::with_max_entries(BLOCKED_ENTRIES, 0);

/// Counters of BLOCKED entries per [`occupancy_slot`] of their key.
#[map]
pub(crate) static OCCUPANCY: Array<u64> = Array::with_max_entries(OCCUPANCY_SLOTS, 0);

/// Blockings the agent reported: task address → their `since_ns`. When such
/// a task runs again, `sched_switch` writes an `Unblocked` record (and
/// nothing is written for the many short sleeps nobody reported).
#[map]
pub(crate) static REPORTED: HashMap<u64, u64> = HashMap::with_max_entries(REPORTED_ENTRIES, 0);

/// Scratch space for `exec` records, one per CPU.
#[map]
pub(crate) static EXEC_SCRATCH: PerCpuArray<ExecEvent> = PerCpuArray::with_max_entries(1, 0);

/// The rss step each process was last reported in: tgid → step.
#[map]
pub(crate) static RSS_STEP: HashMap<u32, u32> = HashMap::with_max_entries(RSS_ENTRIES, 0);

/// The last (tgid, step) `rss_stat` saw on this CPU: a process faulting in
/// page after page within one step skips the `RSS_STEP` lookup.
#[map]
pub(crate) static RSS_LAST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Reclaims under way: pid → when they began.
#[map]
pub(crate) static RECLAIM_BEGIN: HashMap<u32, u64> = HashMap::with_max_entries(RECLAIM_ENTRIES, 0);

/// Fork budgets of watched subtrees: tag → budget (see `ForkBudget`).
/// Least recently used first out: the fork probe makes one per subtree it
/// tags, and nothing removes those.
#[map]
pub(crate) static BUDGETS: LruHashMap<u64, ForkBudget> =
    LruHashMap::with_max_entries(BUDGET_ENTRIES, 0);

/// The fork guard's scope: cgroup kernfs id → `SCOPE_IN` (a `--cgroup`) or
/// `SCOPE_PROTECTED` (a `--protect`ed cgroup), in the scope's hierarchy.
/// Filled by the agent before the probes attach.
#[map]
pub(crate) static SCOPE: HashMap<u64, u32> = HashMap::with_max_entries(SCOPE_ENTRIES, 0);

/// Verdicts of `scope_verdict` per cgroup id.
#[map]
pub(crate) static SCOPE_CACHE: LruHashMap<u64, u32> =
    LruHashMap::with_max_entries(SCOPE_CACHE_ENTRIES, 0);

/// tgids the fork probe never tags or signals: guard, its ancestors, and
/// `--protect`ed pids. Filled by the agent before the probes attach.
#[map]
pub(crate) static PROTECTED_PIDS: HashMap<u32, u32> =
    HashMap::with_max_entries(PROTECTED_PID_ENTRIES, 0);

/// Executables (by inode) the fork probe never tags or signals: trusted
/// service managers and `--protect`ed programs, as the agent verified them
/// (root-owned files in root-owned directories). A comm is never enough.
#[map]
pub(crate) static PROTECTED_EXES: HashMap<ExeId, u32> =
    HashMap::with_max_entries(PROTECTED_EXE_ENTRIES, 0);
