//! Enforcement, apart from the probes: the fork probe's lineage tags,
//! scope and protection, budgets (births, self-copies, growth), and the
//! condemnation and its signals.

use core::ffi::c_void;
use core::intrinsics::{AtomicOrdering, atomic_xadd};
use core::ptr::read_volatile;

use aya_ebpf::bindings::BPF_NOEXIST;
use aya_ebpf::helpers::generated::bpf_send_signal;
use guard_common::{
    ABSENT, COMM_LEN, CondemnedEvent, EventKind, ExeId, ForkBudget, PF_KTHREAD, Refusal, SCOPE_IN,
    SCOPE_MAX_DEPTH, SCOPE_OUT, auto_tag, fork_rule, scope_in, scope_signal,
};

use crate::{maps::*, read::*};

/// The tasks of one `sched_process_fork`.
#[derive(Clone, Copy)]
pub(crate) struct ForkIds {
    pub(crate) parent_pid: u32,
    pub(crate) parent_tgid: u32,
    pub(crate) child_pid: u32,
    pub(crate) child_tgid: u32,
    /// The child's scope verdict (see `fork_verdict`), read once per fork.
    pub(crate) child_verdict: u32,
}

/// Passes the forker's lineage tag to a new process (tagging the subtree
/// first when this is its first fork in scope), counts the birth against
/// the subtree's budget (condemning it when the budget is spent), and
/// signals a forker whose tag is condemned. Returns the signal the newborn
/// child must get too: a condemned member that forks dies, and so does the
/// child it leaves (under SIGKILL), so the subtree can only shrink. Outside a watched
/// scope, two hash lookups that miss (and a cached cgroup verdict).
pub(crate) fn enforce_lineage(
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
        child_verdict,
    } = *ids;
    // SAFETY: the value is copied out at once; entries are plain u64s.
    let tag = match (unsafe { LINEAGE.get(parent_tgid) }).copied() {
        Some(tag) => tag,
        None => tag_subtree(parent, parent_tgid, child_tgid, child_flags, child_verdict)?,
    };
    // A birth after its lineage's refusal was written: the fork had passed
    // the hook before (see `Refusal::slipped`). Looked at before this birth
    // is counted, which may write the refusal. One more lookup, for tagged
    // members only.
    if let Some(refusal) = REFUSALS.get_ptr_mut(tag) {
        // SAFETY: `refusal` points at this map value for the whole program
        // run; the field is a plain integer.
        unsafe {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*refusal).slipped, 1)
        };
    }
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

pub(crate) const SIGKILL: u32 = 9;

/// Whether `child` runs in `parent`'s address space (vfork, posix_spawn):
/// it is a new process, so CLONE_VM without CLONE_THREAD.
pub(crate) fn shares_memory(parent: *const u8, child: *const u8) -> bool {
    let mm = |task| read::<*const u8>(task, config!(task.mm));
    matches!((mm(parent), mm(child)), (Ok(a), Ok(b)) if a == b && !a.is_null())
}

/// Tags a subtree at its first fork in scope, when the agent enforces the
/// fork guard: the forker becomes the root when it may be signalled,
/// otherwise (PID 1, a `--protect`ed supervisor) the child does. The tag
/// gets its budget at once, so the explosion rule holds from the first
/// birth on, whether or not the agent has the CPU. Returns the tag the
/// child inherits, or `None` when there is none (nothing to do, or the
/// child is the root: tagged here, its own birth not counted).
pub(crate) fn tag_subtree(
    parent: *const u8,
    parent_tgid: u32,
    child_tgid: u32,
    child_flags: u32,
    child_verdict: u32,
) -> Option<u64> {
    if config!(fork_guard.enabled) != 1 || child_flags & PF_KTHREAD != 0 || !scope_in(child_verdict)
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
        // A policy may soften the probe's action for this cgroup.
        signal: scope_signal(child_verdict, config!(fork_guard.signal)),
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
/// `PROTECTED_PIDS` map), a trusted executable (`PROTECTED_EXES`, by inode:
/// a comm is the user's to choose), or, when the probe tags by itself, a
/// task outside the scope or in a protected cgroup.
pub(crate) fn protected(task: *const u8, tgid: u32) -> bool {
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
    if let Ok(exe) = exe_id(task) {
        // SAFETY: as above.
        if unsafe { PROTECTED_EXES.get(exe) }.is_some() {
            return true;
        }
    }
    config!(fork_guard.enabled) == 1 && !scope_in(scope_verdict(task as u64))
}

/// `task`'s executable: `mm->exe_file->f_inode`'s number and device. A
/// task with no mm (exiting) has none.
pub(crate) fn exe_id(task: *const u8) -> Result<ExeId, u32> {
    let mm = read::<*const u8>(task, config!(task.mm))?;
    let file = read::<*const u8>(mm, config!(task.mm_exe_file))?;
    let inode = read::<*const u8>(file, config!(task.file_inode))?;
    let sb = read::<*const u8>(inode, config!(task.inode_sb))?;
    Ok(ExeId {
        ino: read::<u64>(inode, config!(task.inode_ino))?,
        dev: read::<u32>(sb, config!(task.sb_dev))?,
        reserved: 0,
    })
}

/// `task`'s cgroup in the scope's hierarchy: `css_set.subsys[index]->cgroup`
/// for a v1 controller, `css_set.dfl_cgrp` for v2.
pub(crate) fn scope_cgroup(task: *const u8) -> Result<*const u8, u32> {
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

pub(crate) fn cgroup_id(cgroup: *const u8) -> Result<u64, u32> {
    let kn = read::<*const u8>(cgroup, config!(task.cgroup_kn))?;
    read::<u64>(kn, config!(task.kernfs_node_id))
}

/// Whether the probes leave `task`'s record out: `--cgroup` was given and
/// its cgroup is outside the scope (one cached lookup per record).
#[inline(always)]
pub(crate) fn out_of_view(task: *const u8) -> bool {
    config!(fork_guard.filter) == 1 && scope_verdict(task as u64) == SCOPE_OUT
}

/// `task`'s scope verdict when the fork probe needs it (it tags subtrees,
/// or filters), computed once per fork; `SCOPE_OUT` otherwise, unread.
#[inline(always)]
pub(crate) fn fork_verdict(task: *const u8) -> u32 {
    if config!(fork_guard.enabled) == 1 || config!(fork_guard.filter) == 1 {
        scope_verdict(task as u64)
    } else {
        SCOPE_OUT
    }
}

/// `SCOPE_IN` (or a softened `SCOPE_IN_*`), `SCOPE_PROTECTED` or
/// `SCOPE_OUT` for `task`'s cgroup: the
/// nearest of it and its ancestors that the agent listed in `SCOPE`
/// decides. Verdicts are cached per cgroup (ids are never reused, and the
/// agent fills `SCOPE` once, before the probes attach).
///
/// The task comes as an address, not a pointer: this is a BPF function of
/// its own, and 6.1's verifier refuses a pointer argument that is not a
/// context or BTF pointer (a raw tracepoint's task is a plain number).
pub(crate) fn scope_verdict(task: u64) -> u32 {
    let task = task as *const u8;
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
pub(crate) fn end_replication(task: *const u8, tgid: u32, comm: &[u8; COMM_LEN]) {
    // SAFETY: a presence check; nothing is read through the reference.
    if unsafe { DEPTH.get(tgid) }.is_none() {
        return;
    }
    let parent_comm = read::<*const u8>(task, config!(task.real_parent)).and_then(task_comm);
    if parent_comm.as_ref() != Ok(comm) {
        let _ = DEPTH.remove(tgid);
    }
}

pub(crate) fn count_birth(tag: u64, forker_tgid: u32, depth: u32) {
    let Some(budget) = BUDGETS.get_ptr_mut(tag) else {
        return;
    };
    let now = bpf_ktime_get_boot_ns_now();
    // SAFETY: `budget` points at this map value for the whole program run;
    // the fields are plain integers.
    unsafe {
        if fork_rule::window_over((*budget).window_start_ns, now, (*budget).window_ns) {
            (*budget).window_start_ns = now;
            (*budget).births = 0;
            (*budget).deep_births = 0;
            (*budget).min_live = read_volatile(&raw const (*budget).live);
        }
        if fork_rule::self_copy(depth, (*budget).min_depth) {
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
        // Births, half of them self-copies, and growth: the rule as
        // `guard_common::fork_rule` states it for the agent too.
        if !fork_rule::explodes(
            births,
            u64::from(deep_births),
            growth,
            u64::from((*budget).max_births),
            (*budget).min_growth,
        ) {
            return;
        }
        // SAFETY: presence checks; nothing is read through the references.
        if CONDEMNED.get(tag).is_some() || REFUSALS.get(tag).is_some() {
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
        // Refused first (where the LSM program is attached, no member forks
        // from now on), then condemned; a budget with no signal (`refuse`)
        // is only refused.
        let _ = REFUSALS.insert(tag, Refusal::default(), u64::from(BPF_NOEXIST));
        if (*budget).signal != 0 {
            let _ = CONDEMNED.insert(tag, (*budget).signal, u64::from(BPF_NOEXIST));
        }
    }
}

/// Sends `signal` to `task`'s thread group: the kfunc
/// `bpf_send_signal_task(task, sig, PIDTYPE_TGID, 0)` (6.13+), which, unlike
/// the `bpf_send_signal` helper, reaches a task other than current. Used on
/// the child `sched_process_fork` hands over, a trusted pointer in a
/// BTF-enabled tracepoint. Before 6.13 the loader makes it a no-op.
#[inline(always)]
pub(crate) fn signal_task(task: *const c_void, signal: u32) {
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
pub(crate) fn count_exit(tag: u64) {
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
