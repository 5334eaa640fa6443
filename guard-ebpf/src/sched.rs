//! The scheduler probes: tasks blocked in D state (`sched_switch`) and
//! khungtaskd's reports (`sched_process_hang`).

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::macros::raw_tracepoint;
use aya_ebpf::programs::RawTracePointContext;
use guard_common::{
    BlockedSlot, EventKind, HungTaskEvent, TRACKING_FULL_SLOT, UnblockedEvent, occupancy_slot,
    task_state,
};

use crate::{maps::*, read::*};

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

pub(crate) fn try_sched_process_hang(ctx: &RawTracePointContext) -> Result<u32, u32> {
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

pub(crate) fn try_sched_switch(ctx: &RawTracePointContext) -> Result<u32, u32> {
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
pub(crate) fn unblocked(task: u64, slot: &BlockedSlot) {
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
