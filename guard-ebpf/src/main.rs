//! guard's kernel side: one small program per tracepoint, each writing one
//! record kind into the `EVENTS` ring buffer.
//!
//! Kernel code stays small: no loops, no policy. Every record that cannot be
//! written is counted in the per-CPU `DROPS` map, so the agent can report it.
//! Per-kernel facts (struct member offsets, the `mark_victim` record layout)
//! come from the agent through the read-only `CONFIG` global.
#![no_std]
#![no_main]
// The BPF target has no compare-and-swap, so core's atomic types lack
// fetch_add; the intrinsic lowers to BPF's atomic add instruction.
#![feature(core_intrinsics)]
#![expect(internal_features, reason = "atomic add on the BPF target (see above)")]
// Inline assembly encodes the one kfunc call (see `kill_task`): aya 0.14
// cannot relocate extern kfunc symbols.
#![feature(asm_experimental_arch)]

use core::{
    ffi::c_void,
    intrinsics::{AtomicOrdering, atomic_xadd},
    ptr::read_volatile,
};

use aya_ebpf::{
    EbpfContext as _,
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_get_smp_processor_id, bpf_ktime_get_boot_ns, bpf_probe_read_kernel,
        generated::{bpf_probe_read_kernel_str, bpf_probe_read_user, bpf_send_signal},
    },
    macros::{btf_tracepoint, map, raw_tracepoint, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, RawTracePointContext, TracePointContext},
};
use guard_common::{
    ABSENT, ARGS_LEN, BLOCKED_ENTRIES, BUDGET_ENTRIES, BlockedSlot, COMM_LEN, CONDEMNED_ENTRIES,
    CgroupAttachEvent, CondemnedEvent, DEFAULT_RING_BYTES, DEPTH_ENTRIES, DROP_SLOTS, EventKind,
    ExecEvent, ExitEvent, ForkBudget, ForkEvent, Header, HungTaskEvent, KIND_SLOTS,
    LINEAGE_ENTRIES, OCCUPANCY_SLOTS, OomKillEvent, PATH_LEN, PROTECTED_COMM_ENTRIES,
    PROTECTED_PID_ENTRIES, ProbeConfig, RECLAIM_ENTRIES, REPORTED_ENTRIES, RSS_ENTRIES,
    RSS_STAT_WORDS, ReclaimStallEvent, RssEvent, SCOPE_CACHE_ENTRIES, SCOPE_ENTRIES, SCOPE_IN,
    SCOPE_MAX_DEPTH, SCOPE_OUT, TRACKING_FULL_SLOT, UnblockedEvent, auto_tag, occupancy_slot,
    oom_field, task_state,
};

/// Per-kernel offsets and layouts, overridden by the agent at load time
/// (`EbpfLoader::override_global`); read with `read_volatile` so the compiler
/// cannot fold the compiled-in placeholder.
#[unsafe(no_mangle)]
static CONFIG: ProbeConfig = ProbeConfig::UNSET;

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

#[map]
static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DROP_SLOTS, 0);

/// Lineage tags: tgid → tag. Set by the agent on the members of a subtree
/// it acts on; inherited at fork (so members born while it acts carry the
/// tag, whoever adopts them later), removed at exit.
#[map]
static LINEAGE: HashMap<u32, u64> = HashMap::with_max_entries(LINEAGE_ENTRIES, 0);

/// Members of tagged subtrees → their self-replication depth: how many
/// generations of one program forked each other down to them (absent: 0,
/// the process exec'd a program other than its parent's), keyed by tgid;
/// for a thread, keyed by its tid, how many threads started threads down
/// to it. Set at fork, cleared at an exec into another program and at
/// exit.
#[map]
static DEPTH: HashMap<u32, u32> = HashMap::with_max_entries(DEPTH_ENTRIES, 0);

/// Condemned tags → signal. A process whose tag is condemned gets the signal
/// the moment it tries to fork: the subtree cannot grow while the agent
/// signals its members.
#[map]
static CONDEMNED: HashMap<u64, u32> = HashMap::with_max_entries(CONDEMNED_ENTRIES, 0);

/// Tasks in uninterruptible sleep: task_struct address → who, when and how
/// they blocked. Written by `sched_switch` as a task leaves the CPU in that
/// state, removed when it is switched in again; the agent reads it every
/// sample tick. Keyed by the task's address, which `sched_switch` hands over
/// as an argument, so the switch-in path reads no kernel memory (a task
/// cannot exit, and its address be reused, without running first).
#[map]
static BLOCKED: HashMap<u64, BlockedSlot> = HashMap::with_max_entries(BLOCKED_ENTRIES, 0);

/// Counters of BLOCKED entries per [`occupancy_slot`] of their key.
#[map]
static OCCUPANCY: Array<u64> = Array::with_max_entries(OCCUPANCY_SLOTS, 0);

/// Blockings the agent reported: task address → their `since_ns`. When such
/// a task runs again, `sched_switch` writes an `Unblocked` record (and
/// nothing is written for the many short sleeps nobody reported).
#[map]
static REPORTED: HashMap<u64, u64> = HashMap::with_max_entries(REPORTED_ENTRIES, 0);

/// Scratch space for `exec` records, one per CPU.
#[map]
static EXEC_SCRATCH: PerCpuArray<ExecEvent> = PerCpuArray::with_max_entries(1, 0);

/// The rss step each process was last reported in: tgid → step.
#[map]
static RSS_STEP: HashMap<u32, u32> = HashMap::with_max_entries(RSS_ENTRIES, 0);

/// Reclaims under way: pid → when they began.
#[map]
static RECLAIM_BEGIN: HashMap<u32, u64> = HashMap::with_max_entries(RECLAIM_ENTRIES, 0);

/// Fork budgets of watched subtrees: tag → budget (see `ForkBudget`).
/// Least recently used first out: the fork probe makes one per subtree it
/// tags, and nothing removes those.
#[map]
static BUDGETS: LruHashMap<u64, ForkBudget> = LruHashMap::with_max_entries(BUDGET_ENTRIES, 0);

/// The fork guard's scope: cgroup kernfs id → `SCOPE_IN` (a `--cgroup`) or
/// `SCOPE_PROTECTED` (a `--protect`ed cgroup), in the scope's hierarchy.
/// Filled by the agent before the probes attach.
#[map]
static SCOPE: HashMap<u64, u32> = HashMap::with_max_entries(SCOPE_ENTRIES, 0);

/// Verdicts of `scope_verdict` per cgroup id.
#[map]
static SCOPE_CACHE: LruHashMap<u64, u32> = LruHashMap::with_max_entries(SCOPE_CACHE_ENTRIES, 0);

/// tgids the fork probe never tags or signals: guard, its ancestors, and
/// `--protect`ed pids. Filled by the agent before the probes attach.
#[map]
static PROTECTED_PIDS: HashMap<u32, u32> = HashMap::with_max_entries(PROTECTED_PID_ENTRIES, 0);

/// comms (NUL-padded) the fork probe never tags or signals: `--protect`ed
/// names.
#[map]
static PROTECTED_COMMS: HashMap<[u8; COMM_LEN], u32> =
    HashMap::with_max_entries(PROTECTED_COMM_ENTRIES, 0);

/// Error value of the `try_` functions: the program's return value, which the
/// kernel ignores for tracepoints.
const FAILED: u32 = 1;

macro_rules! config {
    ($($field:ident).+) => {
        // SAFETY: CONFIG is a plain-old-data static that lives for the whole
        // program; the volatile read only stops constant folding.
        unsafe { read_volatile(&raw const CONFIG.$($field).+) }
    };
}

fn count_drop(slot: u32) {
    if let Some(counter) = DROPS.get_ptr_mut(slot) {
        // SAFETY: the pointer is this CPU's slot of a per-CPU array; nothing
        // else on this CPU runs this program concurrently (tracepoint programs
        // run with preemption disabled).
        unsafe { *counter += 1 };
    }
}

/// Writes a record built on the BPF stack, counting it as lost when the
/// ring buffer is full, or as a failed read when building it failed.
///
/// Records are built first and then copied in by bpf_ringbuf_output, never
/// filled in place after a reserve: the reader consumes records in order, so
/// a reserved record blocks every later one until it is submitted, and these
/// programs can be preempted (measured under a fork bomb: a bash process
/// preempted between reserve and submit held the reader back ~200 ms).
fn emit<T: 'static>(kind: EventKind, record: Result<T, u32>) -> Result<u32, u32> {
    match record {
        Ok(record) => output(kind, &record),
        Err(err) => Err(read_failed(kind, err)),
    }
}

/// Copies a finished record into the ring buffer.
fn output<T: 'static>(kind: EventKind, record: &T) -> Result<u32, u32> {
    EVENTS.output::<T>(record, 0).map(|()| 0).map_err(|_| {
        count_drop(kind as u32);
        FAILED
    })
}

/// Counts a record that could not be built.
fn read_failed(kind: EventKind, err: u32) -> u32 {
    count_drop(KIND_SLOTS + kind as u32);
    err
}

fn header(kind: EventKind) -> Header {
    Header {
        kind: kind as u32,
        // SAFETY: both helpers take no pointers and cannot fail.
        cpu: unsafe { bpf_get_smp_processor_id() },
        // SAFETY: as above.
        boot_ns: unsafe { bpf_ktime_get_boot_ns() },
    }
}

/// Reads a `T` at `base + offset` from kernel memory.
#[inline(always)]
fn read<T>(base: *const u8, offset: u32) -> Result<T, u32> {
    if base.is_null() || offset == ABSENT {
        return Err(FAILED);
    }
    // SAFETY: bpf_probe_read_kernel validates the address and returns an
    // error instead of faulting; `base` is a kernel pointer the tracepoint
    // handed us.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize).cast::<T>()) }
        .map_err(|_| FAILED)
}

/// Copies a NUL-terminated kernel string into `dst` (cut at `N - 1` bytes)
/// and returns its length without the NUL.
#[inline(always)]
fn read_str<const N: usize>(src: *const u8, dst: *mut [u8; N]) -> Result<u32, u32> {
    // SAFETY: the helper writes at most N bytes to `dst`, an array of N bytes
    // on this program's stack, and validates `src`.
    let len = unsafe { bpf_probe_read_kernel_str(dst.cast::<c_void>(), N as u32, src.cast()) };
    if len <= 0 {
        return Err(FAILED);
    }
    Ok(len as u32 - 1)
}

fn task_ids(task: *const u8) -> Result<(u32, u32), u32> {
    Ok((
        read::<u32>(task, config!(task.pid))?,
        read::<u32>(task, config!(task.tgid))?,
    ))
}

fn task_comm(task: *const u8) -> Result<[u8; COMM_LEN], u32> {
    read::<[u8; COMM_LEN]>(task, config!(task.comm))
}

fn real_parent_tgid(task: *const u8) -> Result<u32, u32> {
    let parent = read::<*const u8>(task, config!(task.real_parent))?;
    read::<u32>(parent, config!(task.tgid))
}

/// The task's cgroup v2 id: task->cgroups->dfl_cgrp->kn->id.
fn task_cgroup_v2_id(task: *const u8) -> Result<u64, u32> {
    let css_set = read::<*const u8>(task, config!(task.cgroups))?;
    let cgroup = read::<*const u8>(css_set, config!(task.css_set_dfl_cgrp))?;
    let kn = read::<*const u8>(cgroup, config!(task.cgroup_kn))?;
    read::<u64>(kn, config!(task.kernfs_node_id))
}

// sched_process_fork: fires in kernel_clone() once copy_process() has built
// the child (its pid, tgid, cgroups and comm are set) and before it first
// runs, in the parent's context. Raw tracepoint, TP_PROTO(struct task_struct
// *parent, struct task_struct *child), unchanged since 2.6.32: reading the
// tasks through BTF offsets keeps us off the record layout, which changed in
// 6.x (comm became `__data_loc char[]`) and never carried the child's tgid.
#[btf_tracepoint(function = "sched_process_fork")]
pub fn sched_process_fork(ctx: BtfTracePointContext) -> u32 {
    match try_sched_process_fork(&ctx) {
        Ok(ret) | Err(ret) => ret,
    }
}

fn try_sched_process_fork(ctx: &BtfTracePointContext) -> Result<u32, u32> {
    let parent: *const u8 = ctx.arg(0);
    let child: *const u8 = ctx.arg(1);
    let (parent_pid, parent_tgid) = task_ids(parent)?;
    let (child_pid, child_tgid) = task_ids(child)?;
    let child_flags = read::<u32>(child, config!(task.flags))?;
    let ids = ForkIds {
        parent_pid,
        parent_tgid,
        child_pid,
        child_tgid,
    };
    if let Some(signal) = enforce_lineage(parent, child, &ids, child_flags) {
        // The child `sched_process_fork` hands over, straight from the
        // context: a trusted pointer, as the kfunc requires.
        let child: *const c_void = ctx.arg(1);
        signal_task(child, signal);
    }
    let record = (|| -> Result<ForkEvent, u32> {
        let value = ForkEvent {
            header: header(EventKind::Fork),
            parent_pid,
            parent_tgid,
            child_pid,
            child_tgid,
            child_ppid: real_parent_tgid(child).unwrap_or(parent_tgid),
            child_flags,
            child_cgroup_id: task_cgroup_v2_id(child).unwrap_or(0),
            parent_comm: task_comm(parent)?,
            child_comm: task_comm(child)?,
        };
        Ok(value)
    })();
    emit(EventKind::Fork, record)
}

/// The tasks of one `sched_process_fork`.
#[derive(Clone, Copy)]
struct ForkIds {
    parent_pid: u32,
    parent_tgid: u32,
    child_pid: u32,
    child_tgid: u32,
}

/// Passes the forker's lineage tag to a new process (tagging the subtree
/// first when this is its first fork in scope), counts the birth against
/// the subtree's budget (condemning it when the budget is spent), and
/// signals a forker whose tag is condemned. Returns the signal the newborn
/// child must get too: a condemned member that forks dies, and so does the
/// child it leaves (under SIGKILL), so the subtree can only shrink. Outside a watched
/// scope, two hash lookups that miss (and a cached cgroup verdict).
fn enforce_lineage(
    parent: *const u8,
    child: *const u8,
    ids: &ForkIds,
    child_flags: u32,
) -> Option<u32> {
    let ForkIds {
        parent_pid,
        parent_tgid,
        child_pid,
        child_tgid,
    } = *ids;
    // SAFETY: the value is copied out at once; entries are plain u64s.
    let tag = match (unsafe { LINEAGE.get(parent_tgid) }).copied() {
        Some(tag) => tag,
        None => tag_subtree(parent, child, parent_tgid, child_tgid, child_flags)?,
    };
    if child_tgid != parent_tgid {
        // A full map only means this child is found by the agent's own
        // sweep instead.
        if LINEAGE.insert(child_tgid, tag, 0).is_ok() {
            // SAFETY: the value is copied out at once.
            let depth = (unsafe { DEPTH.get(parent_tgid) }).copied().unwrap_or(0) + 1;
            // Full: the child counts as depth 0, which only delays a verdict.
            let _ = DEPTH.insert(child_tgid, depth, 0);
            count_birth(tag, parent_tgid, depth);
        }
    } else {
        // A thread is a task pids.max counts: a birth. Its depth runs along
        // the threads that started threads (the main thread's is the
        // process's).
        // SAFETY: as above.
        let depth = (unsafe { DEPTH.get(parent_pid) }).copied().unwrap_or(0) + 1;
        let _ = DEPTH.insert(child_pid, depth, 0);
        count_birth(tag, parent_tgid, depth);
    }
    // SAFETY: as above.
    let signal = (unsafe { CONDEMNED.get(tag) }).copied()?;
    // Checked here, at the signal: an exec or a move may have made a tagged
    // process protected since it inherited its tag.
    if protected(parent, parent_tgid) {
        return None;
    }
    // SAFETY: signals the current task's process; allowed in tracing
    // programs, and current is a user task (checked just above).
    unsafe { bpf_send_signal(signal) };
    if child_tgid == parent_tgid || protected(child, child_tgid) {
        return None;
    }
    // A vfork child (a new process sharing its parent's memory) is not
    // stopped here: stopped before it execs, it would hold its parent in D
    // state for good (only its exec or death releases a vfork parent), so
    // that SIGCONT could never resume the parent. The agent's containment
    // stops it on its next pass instead; SIGKILL releases the parent, so a
    // kill takes it at once.
    if signal != SIGKILL && shares_memory(parent, child) {
        return None;
    }
    Some(signal)
}

const SIGKILL: u32 = 9;

/// Whether `child` runs in `parent`'s address space (vfork, posix_spawn):
/// it is a new process, so CLONE_VM without CLONE_THREAD.
fn shares_memory(parent: *const u8, child: *const u8) -> bool {
    let mm = |task| read::<*const u8>(task, config!(task.mm));
    matches!((mm(parent), mm(child)), (Ok(a), Ok(b)) if a == b && !a.is_null())
}

const PF_KTHREAD: u32 = 0x0020_0000;

/// Tags a subtree at its first fork in scope, when the agent enforces the
/// fork guard: the forker becomes the root when it may be signalled,
/// otherwise (PID 1, a `--protect`ed supervisor) the child does. The tag
/// gets its budget at once, so the explosion rule holds from the first
/// birth on, whether or not the agent has the CPU. Returns the tag the
/// child inherits, or `None` when there is none (nothing to do, or the
/// child is the root: tagged here, its own birth not counted).
fn tag_subtree(
    parent: *const u8,
    child: *const u8,
    parent_tgid: u32,
    child_tgid: u32,
    child_flags: u32,
) -> Option<u64> {
    if config!(fork_guard.enabled) != 1
        || child_flags & PF_KTHREAD != 0
        || scope_verdict(child) != SCOPE_IN
    {
        return None;
    }
    let now = bpf_ktime_get_boot_ns_now();
    let parent_is_root = !protected(parent, parent_tgid);
    // A first thread tags its process (unless it is protected): a thread
    // bomb in a process whose fork guard never saw is still a subtree.
    if child_tgid == parent_tgid && !parent_is_root {
        return None;
    }
    let root_tgid = if parent_is_root {
        parent_tgid
    } else {
        child_tgid
    };
    let tag = auto_tag(root_tgid, now);
    let budget = ForkBudget {
        window_start_ns: now,
        window_ns: config!(fork_guard.window_ns),
        births: 0,
        live: 0,
        min_live: 0,
        max_births: config!(fork_guard.max_births),
        min_growth: config!(fork_guard.min_growth),
        signal: config!(fork_guard.signal),
        min_depth: config!(fork_guard.min_depth),
        deep_births: 0,
        reserved: 0,
    };
    if BUDGETS.insert(tag, budget, 0).is_err() || LINEAGE.insert(root_tgid, tag, 0).is_err() {
        return None;
    }
    parent_is_root.then_some(tag)
}

/// Whether the fork probe must never tag or signal `task`: PID 1, a kernel
/// thread, guard or its ancestors and `--protect`ed pids (the
/// `PROTECTED_PIDS` map), a `--protect`ed comm, or, when the probe tags by
/// itself, a task outside the scope or in a protected cgroup.
fn protected(task: *const u8, tgid: u32) -> bool {
    if tgid <= 1 {
        return true;
    }
    let Ok(flags) = read::<u32>(task, config!(task.flags)) else {
        return true;
    };
    if flags & PF_KTHREAD != 0 {
        return true;
    }
    // SAFETY: presence checks; nothing is read through the references.
    if unsafe { PROTECTED_PIDS.get(tgid) }.is_some() {
        return true;
    }
    let Ok(comm) = task_comm(task) else {
        return true;
    };
    // SAFETY: as above.
    if unsafe { PROTECTED_COMMS.get(comm) }.is_some() {
        return true;
    }
    config!(fork_guard.enabled) == 1 && scope_verdict(task) != SCOPE_IN
}

/// `task`'s cgroup in the scope's hierarchy: `css_set.subsys[index]->cgroup`
/// for a v1 controller, `css_set.dfl_cgrp` for v2.
fn scope_cgroup(task: *const u8) -> Result<*const u8, u32> {
    let css_set = read::<*const u8>(task, config!(task.cgroups))?;
    let index = config!(fork_guard.subsys_index);
    if index == ABSENT {
        return read::<*const u8>(css_set, config!(task.css_set_dfl_cgrp));
    }
    if index >= 64 {
        return Err(FAILED);
    }
    let css = read::<*const u8>(css_set, config!(fork_guard.css_set_subsys) + 8 * index)?;
    read::<*const u8>(css, config!(fork_guard.css_cgroup))
}

fn cgroup_id(cgroup: *const u8) -> Result<u64, u32> {
    let kn = read::<*const u8>(cgroup, config!(task.cgroup_kn))?;
    read::<u64>(kn, config!(task.kernfs_node_id))
}

/// `SCOPE_IN`, `SCOPE_PROTECTED` or `SCOPE_OUT` for `task`'s cgroup: the
/// nearest of it and its ancestors that the agent listed in `SCOPE`
/// decides. Verdicts are cached per cgroup (ids are never reused, and the
/// agent fills `SCOPE` once, before the probes attach).
fn scope_verdict(task: *const u8) -> u32 {
    let Ok(mut cgroup) = scope_cgroup(task) else {
        return SCOPE_OUT;
    };
    let Ok(id) = cgroup_id(cgroup) else {
        return SCOPE_OUT;
    };
    // SAFETY: the value is copied out at once.
    if let Some(verdict) = unsafe { SCOPE_CACHE.get(id) }.copied() {
        return verdict;
    }
    let mut verdict = if config!(fork_guard.all_cgroups) == 1 {
        SCOPE_IN
    } else {
        SCOPE_OUT
    };
    let self_offset = config!(fork_guard.cgroup_self);
    let mut current = id;
    for _ in 0..SCOPE_MAX_DEPTH {
        // SAFETY: as above.
        if let Some(listed) = unsafe { SCOPE.get(current) }.copied() {
            verdict = listed;
            break;
        }
        // cgroup->self.parent is the parent's `self`, inside the parent.
        match read::<*const u8>(cgroup, self_offset + config!(fork_guard.css_parent)) {
            Ok(parent) if !parent.is_null() => {
                cgroup = parent.wrapping_sub(self_offset as usize);
            }
            _ => break,
        }
        match cgroup_id(cgroup) {
            Ok(parent_id) => current = parent_id,
            Err(_) => break,
        }
    }
    let _ = SCOPE_CACHE.insert(id, verdict, 0);
    verdict
}

/// The explosion rule for a watched subtree, at the moment of each birth:
/// births in a tumbling window, and growth of the live count from its
/// lowest in that window. Counters are updated atomically; the window reset
/// is not (two CPUs resetting at once lose a birth or two: a backstop, not a
/// ledger). Condemning writes a `Condemned` record.
/// A member of a tagged subtree exec'd: into its parent's program, it goes
/// on replicating it (a script that starts itself again); into another,
/// its depth is 0 again.
fn end_replication(task: *const u8, tgid: u32, comm: &[u8; COMM_LEN]) {
    // SAFETY: a presence check; nothing is read through the reference.
    if unsafe { DEPTH.get(tgid) }.is_none() {
        return;
    }
    let parent_comm = read::<*const u8>(task, config!(task.real_parent)).and_then(task_comm);
    if parent_comm.as_ref() != Ok(comm) {
        let _ = DEPTH.remove(tgid);
    }
}

fn count_birth(tag: u64, forker_tgid: u32, depth: u32) {
    let Some(budget) = BUDGETS.get_ptr_mut(tag) else {
        return;
    };
    let now = bpf_ktime_get_boot_ns_now();
    // SAFETY: `budget` points at this map value for the whole program run;
    // the fields are plain integers.
    unsafe {
        if now.saturating_sub((*budget).window_start_ns) > (*budget).window_ns {
            (*budget).window_start_ns = now;
            (*budget).births = 0;
            (*budget).deep_births = 0;
            (*budget).min_live = read_volatile(&raw const (*budget).live);
        }
        if depth >= (*budget).min_depth {
            atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(&raw mut (*budget).deep_births, 1);
        }
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*budget).births, 1);
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*budget).live, 1);
        let births = read_volatile(&raw const (*budget).births);
        let deep_births = read_volatile(&raw const (*budget).deep_births);
        // Signed: members the agent tagged late are not counted in, but
        // their exits are, so the count may dip below zero.
        let live = read_volatile(&raw const (*budget).live) as i64;
        let min_live = read_volatile(&raw const (*budget).min_live) as i64;
        let growth = live - min_live;
        // Births, half of them self-copies, and growth.
        if births < u64::from((*budget).max_births)
            || 2 * deep_births < (*budget).max_births
            || growth < i64::from((*budget).min_growth)
        {
            return;
        }
        // SAFETY: a presence check; nothing is read through the reference.
        if CONDEMNED.get(tag).is_some() {
            return;
        }
        // The record goes out before the condemnation takes effect, so that
        // it precedes every exit the condemnation causes (this program can
        // be preempted between the two). Two CPUs meeting the rule at once
        // may both write it: the agent acts on the first.
        let record = CondemnedEvent {
            header: header(EventKind::Condemned),
            tag,
            births,
            growth: growth as u64,
            window_ns: (*budget).window_ns,
            forker_tgid,
            signal: (*budget).signal,
            deep_births,
            reserved: 0,
        };
        let _ = output(EventKind::Condemned, &record);
        let _ = CONDEMNED.insert(tag, (*budget).signal, u64::from(BPF_NOEXIST));
    }
}

/// Sends `signal` to `task`'s thread group: the kfunc
/// `bpf_send_signal_task(task, sig, PIDTYPE_TGID, 0)` (6.13+), which, unlike
/// the `bpf_send_signal` helper, reaches a task other than current. Used on
/// the child `sched_process_fork` hands over, a trusted pointer in a
/// BTF-enabled tracepoint. Before 6.13 the loader makes it a no-op.
#[inline(always)]
fn signal_task(task: *const c_void, signal: u32) {
    const PIDTYPE_TGID: u64 = 1;
    // SAFETY: the bytes are `guard_common::KFUNC_SIGNAL_TASK_CALL`, one BPF
    // instruction, a kfunc call whose immediate the loader patches before
    // the verifier sees it. It reads r1-r4 and, as any call, clobbers r0-r5,
    // as declared.
    unsafe {
        core::arch::asm!(
            ".byte 0x85, 0x20, 0x00, 0x00, 0x6b, 0x66, 0x6e, 0x63",
            inout("r1") task => _,
            inout("r2") u64::from(signal) => _,
            inout("r3") PIDTYPE_TGID => _,
            inout("r4") 0u64 => _,
            out("r5") _,
            out("r0") _,
        );
    }
}

/// A member of a budgeted subtree is gone.
fn count_exit(tag: u64) {
    let Some(budget) = BUDGETS.get_ptr_mut(tag) else {
        return;
    };
    // SAFETY: as in count_birth.
    unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*budget).live, u64::MAX);
        let live = read_volatile(&raw const (*budget).live);
        // Signed, as in count_birth.
        if (live as i64) < read_volatile(&raw const (*budget).min_live) as i64 {
            (*budget).min_live = live;
        }
    }
}

// sched_process_exec: fires in exec_binprm() after the new image is loaded
// and comm is updated, in the exec'ing task. Raw tracepoint, TP_PROTO(struct
// task_struct *p, pid_t old_pid, struct linux_binprm *bprm) since 3.4; the
// filename is bprm->filename, as the classic record's `filename` field.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn sched_process_exec(ctx: RawTracePointContext) -> u32 {
    match try_sched_process_exec(&ctx) {
        Ok(ret) | Err(ret) => ret,
    }
}

fn try_sched_process_exec(ctx: &RawTracePointContext) -> Result<u32, u32> {
    let task: *const u8 = ctx.arg(0);
    let old_pid: u64 = ctx.arg(1);
    let bprm: *const u8 = ctx.arg(2);
    let kind = EventKind::Exec;
    let (pid, tgid) = task_ids(task).map_err(|e| read_failed(kind, e))?;
    let filename =
        read::<*const u8>(bprm, config!(task.binprm_filename)).map_err(|e| read_failed(kind, e))?;
    let comm = task_comm(task).map_err(|e| read_failed(kind, e))?;
    end_replication(task, tgid, &comm);
    // Built in this CPU's scratch slot: at 440 bytes the record does not
    // fit the 512-byte BPF stack beside the rest.
    let record = EXEC_SCRATCH.get_ptr_mut(0).ok_or(FAILED)?;
    // SAFETY: `record` is this CPU's slot of a per-CPU array, valid for the
    // whole run, and nothing else on this CPU runs meanwhile (the program
    // runs with migration disabled, and a nested run of the same program on
    // this CPU is refused by the kernel's recursion check).
    unsafe {
        core::ptr::write_bytes(record, 0, 1);
        (*record).header = header(kind);
        (*record).pid = pid;
        (*record).tgid = tgid;
        (*record).old_pid = old_pid as u32;
        (*record).comm = comm;
        (*record).filename_len = read_str::<PATH_LEN>(filename, &raw mut (*record).filename)
            .map_err(|e| read_failed(kind, e))?;
        // The arguments, from the new image's own memory: this runs in the
        // exec'ing task, whose mm is the new one by now. Unreadable
        // arguments leave `args_len` 0, not a lost record.
        if let Ok((start, end)) = arg_block(task) {
            let total = end.saturating_sub(start);
            let len = if total > ARGS_LEN as u64 {
                ARGS_LEN as u32
            } else {
                total as u32
            };
            if len > 0
                && len <= ARGS_LEN as u32
                && bpf_probe_read_user(
                    (&raw mut (*record).args).cast::<c_void>(),
                    len,
                    start as *const c_void,
                ) == 0
            {
                (*record).args_len = len;
                (*record).args_cut = (total - u64::from(len)) as u32;
            }
        }
        output(kind, &*record)
    }
}

/// `mm->arg_start` and `mm->arg_end` of `task`.
fn arg_block(task: *const u8) -> Result<(u64, u64), u32> {
    let mm = read::<*const u8>(task, config!(task.mm))?;
    Ok((
        read::<u64>(mm, config!(task.mm_arg_start))?,
        read::<u64>(mm, config!(task.mm_arg_end))?,
    ))
}

// sched_process_exit: fires in do_exit() after `tsk->exit_code = code` and
// before exit_notify(), in the exiting task. Raw tracepoint, TP_PROTO(struct
// task_struct *p) until 6.15; 6.16 added `bool group_dead`. Where the
// argument is missing (CONFIG.task.exit_has_group_dead == 0, resolved from
// BTF) we read signal->live, which do_exit() decremented just before.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sched_process_exit(ctx: RawTracePointContext) -> u32 {
    match try_sched_process_exit(&ctx) {
        Ok(ret) | Err(ret) => ret,
    }
}

fn try_sched_process_exit(ctx: &RawTracePointContext) -> Result<u32, u32> {
    let task: *const u8 = ctx.arg(0);
    let group_dead = if config!(task.exit_has_group_dead) != 0 {
        let arg: u64 = ctx.arg(1);
        arg & 0xff != 0
    } else {
        let signal = read::<*const u8>(task, config!(task.signal))?;
        read::<i32>(signal, config!(task.signal_live))? == 0
    };
    let (pid, tgid) = task_ids(task)?;
    if group_dead {
        // SAFETY: the value is copied out at once.
        if let Some(tag) = (unsafe { LINEAGE.get(tgid) }).copied()
            && LINEAGE.remove(tgid).is_ok()
        {
            count_exit(tag);
        }
        let _ = RSS_STEP.remove(tgid);
        let _ = DEPTH.remove(tgid);
    } else {
        // SAFETY: the value is copied out at once.
        if let Some(tag) = (unsafe { LINEAGE.get(tgid) }).copied() {
            // One thread of a tagged process ends: a task fewer.
            count_exit(tag);
        }
    }
    let _ = DEPTH.remove(pid);
    let record = (|| -> Result<ExitEvent, u32> {
        let value = ExitEvent {
            header: header(EventKind::Exit),
            pid,
            tgid,
            ppid: real_parent_tgid(task).unwrap_or(0),
            exit_code: read::<u32>(task, config!(task.exit_code))?,
            flags: read::<u32>(task, config!(task.flags))?,
            group_dead: group_dead as u32,
            comm: task_comm(task)?,
        };
        Ok(value)
    })();
    emit(EventKind::Exit, record)
}

// sched_process_hang: fires in khungtaskd's check_hung_task() for a task in
// TASK_UNINTERRUPTIBLE longer than hung_task_timeout_secs, before the
// rate-limited console warning (so it fires even when hung_task_warnings is
// used up). Raw tracepoint, TP_PROTO(struct task_struct *tsk) since 4.0.
#[raw_tracepoint(tracepoint = "sched_process_hang")]
pub fn sched_process_hang(ctx: RawTracePointContext) -> u32 {
    match try_sched_process_hang(&ctx) {
        Ok(ret) | Err(ret) => ret,
    }
}

fn try_sched_process_hang(ctx: &RawTracePointContext) -> Result<u32, u32> {
    let task: *const u8 = ctx.arg(0);
    let record = (|| -> Result<HungTaskEvent, u32> {
        let (pid, tgid) = task_ids(task)?;
        let value = HungTaskEvent {
            header: header(EventKind::HungTask),
            pid,
            tgid,
            comm: task_comm(task)?,
        };
        Ok(value)
    })();
    emit(EventKind::HungTask, record)
}

// cgroup_attach_task / cgroup_transfer_tasks: fire once per task moved into
// another cgroup of one hierarchy (a write to cgroup.procs or tasks, or a v1
// cgroup_transfer_tasks), for v1 and v2 hierarchies alike. This is how the
// agent learns v1 membership, which the BPF cgroup-id helpers cannot see.
// Raw tracepoint, TP_PROTO(struct cgroup *dst_cgrp, const char *path, struct
// task_struct *task, bool threadgroup) since the path became an argument
// (TRACE_CGROUP_PATH, 5.0); the agent checks that prototype in BTF and skips
// the probe on kernels where it differs.
#[raw_tracepoint]
pub fn cgroup_attach_task(ctx: RawTracePointContext) -> u32 {
    match try_cgroup_attach_task(&ctx) {
        Ok(ret) | Err(ret) => ret,
    }
}

fn try_cgroup_attach_task(ctx: &RawTracePointContext) -> Result<u32, u32> {
    let cgroup: *const u8 = ctx.arg(0);
    let path: *const u8 = ctx.arg(1);
    let task: *const u8 = ctx.arg(2);
    // Built in place (the record is 288 bytes of a 512-byte stack).
    let kind = EventKind::CgroupAttach;
    let (pid, tgid) = task_ids(task).map_err(|e| read_failed(kind, e))?;
    let root =
        read::<*const u8>(cgroup, config!(task.cgroup_root)).map_err(|e| read_failed(kind, e))?;
    let hierarchy_id =
        read::<i32>(root, config!(task.root_hierarchy_id)).map_err(|e| read_failed(kind, e))?;
    let mut record = CgroupAttachEvent {
        header: header(kind),
        pid,
        tgid,
        hierarchy_id: hierarchy_id as u32,
        path_len: 0,
        path: [0; PATH_LEN],
    };
    record.path_len =
        read_str::<PATH_LEN>(path, &raw mut record.path).map_err(|e| read_failed(kind, e))?;
    output(kind, &record)
}

// sched_switch: fires in __schedule() on every context switch, in the CPU's
// context, with `prev` leaving and `next` arriving: the one place that sees
// a task go to sleep with its state and run again, so the agent knows which
// tasks are in D state and since when without a record per switch. Raw
// tracepoint, TP_PROTO(bool preempt, struct task_struct *prev, struct
// task_struct *next) since 4.x; 5.18 added `unsigned int prev_state` (the
// state __schedule() acted on: reading prev->__state afterwards races with
// a wakeup). Older kernels read prev->__state (5.14+) or prev->state, whose
// offset the agent resolves from BTF. A preempted task is runnable whatever
// its state says, so it is never recorded. This runs on the hottest path
// guard hooks: an array load for almost every switch, a map write only for
// an uninterruptible sleep, no ring-buffer record unless the
// agent asked for one (`REPORTED`). The switch-in side reads no kernel
// memory: the task's address is the key, and an array of counters by a hash
// of it spares the hash lookup for tasks that are not in the map.
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn sched_switch(ctx: RawTracePointContext) -> u32 {
    match try_sched_switch(&ctx) {
        Ok(ret) | Err(ret) => ret,
    }
}

fn try_sched_switch(ctx: &RawTracePointContext) -> Result<u32, u32> {
    let preempt: u64 = ctx.arg(0);
    let prev: u64 = ctx.arg(1);
    let next: u64 = ctx.arg(2);
    // Switch-in: an inlined array load; the hash lookup only when the
    // task's slot counts an entry.
    if let Some(count) = OCCUPANCY.get_ptr_mut(occupancy_slot(next))
        // SAFETY: a valid u64 slot of an array map.
        && unsafe { *count } != 0
        // SAFETY: the value is copied out at once.
        && let Some(slot) = unsafe { BLOCKED.get(next) }.copied()
        && BLOCKED.remove(next).is_ok()
    {
        // SAFETY: as above; an atomic decrement (other CPUs update other
        // tasks of the same slot).
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(count, u64::MAX) };
        unblocked(next, &slot);
    }
    if preempt & 0xff != 0 {
        return Ok(0);
    }
    let state = if config!(task.switch_has_prev_state) != 0 {
        let arg: u64 = ctx.arg(3);
        arg as u32
    } else {
        read::<u32>(prev as *const u8, config!(task.state))?
    };
    if state & task_state::UNINTERRUPTIBLE == 0 || state & task_state::NOLOAD != 0 {
        return Ok(0);
    }
    let task = prev as *const u8;
    let (pid, tgid) = task_ids(task)?;
    if pid == 0 {
        return Ok(0);
    }
    let slot = BlockedSlot {
        since_ns: bpf_ktime_get_boot_ns_now(),
        pid,
        tgid,
        state,
        reserved: 0,
        comm: task_comm(task)?,
    };
    let Some(count) = OCCUPANCY.get_ptr_mut(occupancy_slot(prev)) else {
        return Err(FAILED);
    };
    if BLOCKED.insert(prev, slot, 0).is_err() {
        count_drop(TRACKING_FULL_SLOT);
        return Ok(0);
    }
    // SAFETY: as above. Counted after the insert: the task cannot be
    // switched in elsewhere before this switch completes.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(count, 1) };
    Ok(0)
}

/// A blocked task runs again: when the agent reported this blocking, tell it
/// how long it lasted.
fn unblocked(task: u64, slot: &BlockedSlot) {
    // SAFETY: the value is copied out at once.
    let Some(reported) = (unsafe { REPORTED.get(task) }).copied() else {
        return;
    };
    let _ = REPORTED.remove(task);
    if reported != slot.since_ns {
        return;
    }
    let now = bpf_ktime_get_boot_ns_now();
    let record = UnblockedEvent {
        header: header(EventKind::Unblocked),
        pid: slot.pid,
        tgid: slot.tgid,
        state: slot.state,
        reserved: 0,
        since_ns: slot.since_ns,
        blocked_ns: now.saturating_sub(slot.since_ns),
        comm: slot.comm,
    };
    let _ = output(EventKind::Unblocked, &record);
}

fn bpf_ktime_get_boot_ns_now() -> u64 {
    // SAFETY: takes no pointers and cannot fail.
    unsafe { bpf_ktime_get_boot_ns() }
}

// rss_stat: fires from add_mm_counter()/inc_mm_counter() and friends each
// time one of an mm's resident-memory counters changes (a page faulted in,
// unmapped, swapped), in the context of the task changing it (usually the
// mm's own; reclaim and other processes' munmap too, which we skip). Raw
// tracepoint, TP_PROTO(struct mm_struct *mm, int member) since 5.5 (the
// classic record adds curr and the counter's size). The counters are
// `struct percpu_counter rss_stat[NR_MM_COUNTERS]` since 6.2 and an
// `atomic_long_t count[]` before: the agent gives their offset, stride and
// count offset from BTF, and this program copies all four in one read. It
// runs once per page at worst (a 1 GB/s allocator: 250k times a second):
// one read, one hash lookup, a record only when the process crosses a step.
#[raw_tracepoint(tracepoint = "rss_stat")]
pub fn rss_stat(ctx: RawTracePointContext) -> u32 {
    match try_rss_stat(&ctx) {
        Ok(ret) | Err(ret) => ret,
    }
}

fn try_rss_stat(ctx: &RawTracePointContext) -> Result<u32, u32> {
    let mm: u64 = ctx.arg(0);
    let step_pages = u64::from(config!(memory.rss_step_pages));
    if mm == 0 || step_pages == 0 {
        return Ok(0);
    }
    // SAFETY: returns the current task pointer; no arguments.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    if read::<u64>(task, config!(memory.task_mm))? != mm {
        return Ok(0);
    }
    let counters = read::<[i64; RSS_STAT_WORDS]>(mm as *const u8, config!(memory.mm_rss_stat))
        .map_err(|e| read_failed(EventKind::Rss, e))?;
    let stride = config!(memory.rss_stride) as usize;
    let at = config!(memory.rss_count) as usize;
    let pages = |member: usize| -> Result<u64, u32> {
        let word = (member * stride + at) / 8;
        if word >= RSS_STAT_WORDS {
            return Err(FAILED);
        }
        Ok(counters[word].max(0) as u64)
    };
    // MM_FILEPAGES, MM_ANONPAGES, MM_SWAPENTS, MM_SHMEMPAGES.
    let (file, anon, swap, shmem) = (pages(0)?, pages(1)?, pages(2)?, pages(3)?);
    let step = ((file + anon + shmem) / step_pages) as u32;
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // A plain u32 with a sentinel, read through a volatile load: the
    // compiler would otherwise build the Option by OR-ing the map value
    // pointer into a register, which the verifier refuses.
    let previous = match RSS_STEP.get_ptr(tgid) {
        // SAFETY: a valid value pointer of the map, read at once.
        Some(value) => unsafe { read_volatile(value) },
        None => u32::MAX,
    };
    if previous == step {
        return Ok(0);
    }
    if RSS_STEP.insert(tgid, step, 0).is_err() || (previous == u32::MAX && step == 0) {
        return Ok(0);
    }
    let page = u64::from(config!(memory.page_size));
    let record = RssEvent {
        header: header(EventKind::Rss),
        pid: pid_tgid as u32,
        tgid,
        step,
        previous_step: previous,
        file_bytes: file * page,
        anon_bytes: anon * page,
        shmem_bytes: shmem * page,
        swap_bytes: swap * page,
        comm: bpf_get_current_comm().map_err(|_| read_failed(EventKind::Rss, FAILED))?,
    };
    output(EventKind::Rss, &record)
}

// mm_vmscan_direct_reclaim_begin / mm_vmscan_memcg_reclaim_begin: fire when
// an allocating task starts reclaiming memory itself, because the host (in
// __alloc_pages_slowpath) or its memory cgroup (at its limit, in
// try_to_free_mem_cgroup_pages) ran short: time it spends there is a stall.
// Raw tracepoints, TP_PROTO(int order, gfp_t gfp_flags) for both since 4.x
// (order and flags moved into the classic record's fields, unchanged here).
#[raw_tracepoint]
pub fn reclaim_begin(_ctx: RawTracePointContext) -> u32 {
    let pid = bpf_get_current_pid_tgid() as u32;
    let _ = RECLAIM_BEGIN.insert(pid, bpf_ktime_get_boot_ns_now(), 0);
    0
}

// mm_vmscan_direct_reclaim_end / mm_vmscan_memcg_reclaim_end: the reclaim
// above ended. TP_PROTO(unsigned long nr_reclaimed) since 4.x.
#[raw_tracepoint]
pub fn reclaim_end(ctx: RawTracePointContext) -> u32 {
    match try_reclaim_end(&ctx) {
        Ok(ret) | Err(ret) => ret,
    }
}

fn try_reclaim_end(ctx: &RawTracePointContext) -> Result<u32, u32> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let pid = pid_tgid as u32;
    // SAFETY: the value is copied out at once.
    let Some(began) = (unsafe { RECLAIM_BEGIN.get(pid) }).copied() else {
        return Ok(0);
    };
    let _ = RECLAIM_BEGIN.remove(pid);
    let stall_ns = bpf_ktime_get_boot_ns_now().saturating_sub(began);
    if stall_ns < u64::from(config!(memory.reclaim_stall_us)) * 1000 {
        return Ok(0);
    }
    let nr_reclaimed: u64 = ctx.arg(0);
    let record = ReclaimStallEvent {
        header: header(EventKind::ReclaimStall),
        pid,
        tgid: (pid_tgid >> 32) as u32,
        stall_ns,
        nr_reclaimed,
        comm: bpf_get_current_comm().map_err(|_| read_failed(EventKind::ReclaimStall, FAILED))?,
    };
    output(EventKind::ReclaimStall, &record)
}

// oom/mark_victim: fires when the OOM killer has chosen a victim, in the
// context of the task whose allocation failed, before SIGKILL is sent. A
// classic tracepoint on purpose: its record carries the rss figures the
// kernel computed for the decision (total_vm, anon/file/shmem rss, pgtables,
// oom_score_adj: added in 6.x; older kernels give only the pid, and the
// raw arguments changed from `int pid` to the task and its uid). Offsets come
// from the tracepoint's tracefs `format` file; absent fields stay absent.
#[tracepoint(category = "oom", name = "mark_victim")]
pub fn mark_victim(ctx: TracePointContext) -> u32 {
    match try_mark_victim(&ctx) {
        Ok(ret) | Err(ret) => ret,
    }
}

fn try_mark_victim(ctx: &TracePointContext) -> Result<u32, u32> {
    let record = ctx.as_ptr().cast::<u8>().cast_const();
    let record = (|| -> Result<OomKillEvent, u32> {
        let mut present = 0;
        let mut field = |offset: u32, bit: u32| -> u64 {
            match read::<u64>(record, offset) {
                Ok(value) => {
                    present |= bit;
                    value
                }
                Err(_) => 0,
            }
        };
        let total_vm_kb = field(config!(mark_victim.total_vm), oom_field::TOTAL_VM);
        let anon_rss_kb = field(config!(mark_victim.anon_rss), oom_field::ANON_RSS);
        let file_rss_kb = field(config!(mark_victim.file_rss), oom_field::FILE_RSS);
        let shmem_rss_kb = field(config!(mark_victim.shmem_rss), oom_field::SHMEM_RSS);
        let pgtables_kb = field(config!(mark_victim.pgtables), oom_field::PGTABLES);
        let uid = match read::<u32>(record, config!(mark_victim.uid)) {
            Ok(uid) => {
                present |= oom_field::UID;
                uid
            }
            Err(_) => 0,
        };
        let oom_score_adj = match read::<i16>(record, config!(mark_victim.oom_score_adj)) {
            Ok(adj) => {
                present |= oom_field::OOM_SCORE_ADJ;
                i32::from(adj)
            }
            Err(_) => 0,
        };
        let mut comm = [0u8; COMM_LEN];
        let comm_offset = config!(mark_victim.comm);
        if comm_offset != ABSENT {
            // `__data_loc char[]`: a u32 whose low half is the string's offset
            // in the record; otherwise an inline char[16].
            let at = if config!(mark_victim.comm_is_data_loc) != 0 {
                read::<u32>(record, comm_offset).map(|loc| loc & 0xffff)
            } else {
                Ok(comm_offset)
            };
            if let Ok(at) = at
                && read_str::<COMM_LEN>(record.wrapping_add(at as usize), &raw mut comm).is_ok()
            {
                present |= oom_field::COMM;
            }
        }
        let trigger = bpf_get_current_pid_tgid();
        let value = OomKillEvent {
            header: header(EventKind::OomKill),
            pid: read::<u32>(record, config!(mark_victim.pid))?,
            uid,
            trigger_pid: trigger as u32,
            trigger_tgid: (trigger >> 32) as u32,
            total_vm_kb,
            anon_rss_kb,
            file_rss_kb,
            shmem_rss_kb,
            pgtables_kb,
            oom_score_adj,
            present,
            comm,
        };
        Ok(value)
    })();
    emit(EventKind::OomKill, record)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
