//! Refusal, the one LSM program: `lsm/task_alloc` fails the fork or clone
//! of a member of a refused lineage with EAGAIN.
//!
//! `security_task_alloc` runs in `copy_process` before the new task's
//! memory is copied or a pid allocated, so a refused fork costs the kernel
//! almost nothing, and the caller gets the EAGAIN that pids.max and
//! RLIMIT_NPROC give (bash retries with growing sleeps; a thread pool
//! keeps the threads it has). Only members of a tag in `REFUSALS` are
//! refused; everyone else, in the same cgroup too, forks as before.
//!
//! Cost: for a process outside every tagged subtree, one hash lookup that
//! misses (`LINEAGE`). A member of a tagged subtree that is not refused
//! costs a second lookup (`REFUSALS`).
//!
//! The hook fires only when `bpf` is in the active LSM list; the agent
//! checks that before it relies on refusal (see `kernel::lsm`).

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::helpers::generated::bpf_send_signal;
use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_get_current_task};
use aya_ebpf::macros::lsm;
use aya_ebpf::programs::LsmContext;
use guard_common::REFUSED_ERRNO;

use crate::{fork_guard::protected, maps::*, read::*};

/// `LSM_HOOK(int, 0, task_alloc, struct task_struct *task, unsigned long
/// clone_flags)`: argument 2 is the verdict of the BPF LSM programs before
/// this one, which stands when it refuses already.
#[lsm(hook = "task_alloc")]
pub fn task_alloc(ctx: LsmContext) -> i32 {
    let before: i32 = ctx.arg(2);
    if before != 0 {
        return before;
    }
    verdict()
}

#[inline(always)]
fn verdict() -> i32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: the value is copied out at once.
    let Some(tag) = (unsafe { LINEAGE.get(tgid) }).copied() else {
        return 0;
    };
    let Some(refusal) = REFUSALS.get_ptr_mut(tag) else {
        return 0;
    };
    // SAFETY: returns the current task's address; nothing is dereferenced
    // here (reads go through bpf_probe_read_kernel).
    let task = unsafe { bpf_get_current_task() } as *const u8;
    // Judged at the refusal, as at a signal: an exec may have made a member
    // something protected since it inherited its tag.
    if protected(task, tgid) {
        return 0;
    }
    // SAFETY: `refusal` points at this map value for the whole program run;
    // its fields are plain integers.
    unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*refusal).refused, 1);
        (*refusal).last_ns = bpf_ktime_get_boot_ns_now();
    }
    // A condemned member that tries to fork gets its signal now, as the
    // fork probe would give it after a fork that succeeded.
    // SAFETY: the value is copied out at once.
    if let Some(signal) = (unsafe { CONDEMNED.get(tag) }).copied() {
        // SAFETY: signals the current task's process, a user task (checked
        // by `protected`); allowed in LSM programs.
        unsafe { bpf_send_signal(signal) };
    }
    -REFUSED_ERRNO
}
