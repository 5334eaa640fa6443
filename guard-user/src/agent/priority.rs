//! The agent's own standing on a host in trouble: memory locked, out of
//! the OOM killer's reach, nice -20, and SCHED_FIFO while a bomb is on.

use std::io;

/// Keeps the agent's memory resident and away from the OOM killer: a
/// memory runaway pages things out and the OOM killer picks big processes.
/// Each is said once on stderr when it fails (the README promises all
/// three), and the `start` record tells what holds.
///
/// Called once the probes are attached: loading parses the kernel's BTF
/// (tens of MiB of heap at its peak), and locked pages cannot be given
/// back, so the heap is trimmed first and then locked. `MCL_ONFAULT` locks
/// pages as they are first touched, not whole mappings: thread stacks and
/// the binary stay as small as what is used (measured: 77 MB resident
/// before, see docs/benchmarks.md for now).
pub(super) fn harden_self() -> Hardening {
    // SAFETY: returns this process's free heap pages to the kernel; no
    // pointers involved. (musl's allocator gives freed pages back itself.)
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0)
    };
    // SAFETY: locks this process's own pages; no pointers involved.
    let memory_locked =
        unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE | libc::MCL_ONFAULT) } == 0;
    if !memory_locked {
        tracing::warn!(
            "could not lock guard's memory ({}): under memory pressure its pages may be \
             swapped out, and it may react late",
            io::Error::last_os_error()
        );
    }
    if let Err(err) = std::fs::write("/proc/self/oom_score_adj", "-1000") {
        tracing::warn!(
            "could not set guard's oom_score_adj to -1000 ({err}; it needs CAP_SYS_RESOURCE): \
             the OOM killer may pick guard"
        );
    }
    let oom_score_adj = std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|v| v.trim().parse().ok());
    // SAFETY: setpriority on this process only.
    let nice_raised = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, -20) } == 0;
    if !nice_raised {
        tracing::warn!(
            "could not set guard's nice to -20 ({}): a busy host may delay it",
            io::Error::last_os_error()
        );
    }
    Hardening {
        memory_locked,
        oom_score_adj,
    }
}

/// What `harden_self` achieved.
pub(super) struct Hardening {
    pub(super) memory_locked: bool,
    pub(super) oom_score_adj: Option<i32>,
}

/// Sets the calling thread's scheduling: SCHED_FIFO at the lowest real-time
/// priority, or back to normal. A fork bomb puts hundreds of runnable
/// processes on the CPUs, where CFS would give the agent a few percent; as
/// SCHED_FIFO it preempts them (it blocks on epoll between batches and
/// sleeps between signal rounds, and the kernel's RT throttling caps it at
/// sched_rt_runtime_us anyway). At normal priority the rest of the time,
/// because preempting a busy workload at every batch costs it (measured: a
/// fork loop ran 7.6% slower under a SCHED_FIFO agent, 2.8% under a normal
/// one).
pub fn set_realtime(on: bool) -> bool {
    let (policy, priority) = if on {
        (libc::SCHED_FIFO, 1)
    } else {
        (libc::SCHED_OTHER, 0)
    };
    // SAFETY: sched_param is plain integers (musl's has sporadic-server
    // fields beside the priority): all zeroes is a valid value.
    let mut param: libc::sched_param = unsafe { std::mem::zeroed() };
    param.sched_priority = priority;
    // SAFETY: sets the calling thread's own policy; `param` outlives the
    // call. The raw system call, which acts on one thread: musl's wrapper
    // refuses (ENOSYS) because POSIX means the whole process.
    let ok =
        unsafe { libc::syscall(libc::SYS_sched_setscheduler, 0, policy, &raw const param) } == 0;
    if !ok {
        tracing::warn!(
            "could not change guard's scheduling: {}",
            io::Error::last_os_error()
        );
    }
    ok
}
