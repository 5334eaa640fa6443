//! Reading kernel memory and writing records: the helpers every probe uses.

use core::ffi::c_void;

use aya_ebpf::helpers::generated::bpf_probe_read_kernel_str;
use aya_ebpf::helpers::{bpf_get_smp_processor_id, bpf_ktime_get_boot_ns, bpf_probe_read_kernel};
use guard_common::{ABSENT, COMM_LEN, EventKind, Header, KIND_SLOTS};

use crate::maps::*;

/// Error value of the `try_` functions: the program's return value, which the
/// kernel ignores for tracepoints.
pub(crate) const FAILED: u32 = 1;

pub(crate) fn count_drop(slot: u32) {
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
pub(crate) fn emit<T: 'static>(kind: EventKind, record: Result<T, u32>) -> Result<u32, u32> {
    match record {
        Ok(record) => output(kind, &record),
        Err(err) => Err(read_failed(kind, err)),
    }
}

/// Copies a finished record into the ring buffer.
pub(crate) fn output<T: 'static>(kind: EventKind, record: &T) -> Result<u32, u32> {
    EVENTS.output::<T>(record, 0).map(|()| 0).map_err(|_| {
        count_drop(kind as u32);
        FAILED
    })
}

/// Counts a record that could not be built.
pub(crate) fn read_failed(kind: EventKind, err: u32) -> u32 {
    count_drop(KIND_SLOTS + kind as u32);
    err
}

pub(crate) fn header(kind: EventKind) -> Header {
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
pub(crate) fn read<T>(base: *const u8, offset: u32) -> Result<T, u32> {
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
pub(crate) fn read_str<const N: usize>(src: *const u8, dst: *mut [u8; N]) -> Result<u32, u32> {
    // SAFETY: the helper writes at most N bytes to `dst`, an array of N bytes
    // on this program's stack, and validates `src`.
    let len = unsafe { bpf_probe_read_kernel_str(dst.cast::<c_void>(), N as u32, src.cast()) };
    if len <= 0 {
        return Err(FAILED);
    }
    Ok(len as u32 - 1)
}

/// (pid, tgid): one read where they sit side by side in `task_struct`, as
/// they have since 2.6 (two helper calls cost more than one).
pub(crate) fn task_ids(task: *const u8) -> Result<(u32, u32), u32> {
    let (pid, tgid) = (config!(task.pid), config!(task.tgid));
    if tgid == pid.wrapping_add(4) {
        let both = read::<u64>(task, pid)?;
        return Ok((both as u32, (both >> 32) as u32));
    }
    Ok((read::<u32>(task, pid)?, read::<u32>(task, tgid)?))
}

pub(crate) fn task_comm(task: *const u8) -> Result<[u8; COMM_LEN], u32> {
    read::<[u8; COMM_LEN]>(task, config!(task.comm))
}

pub(crate) fn real_parent_tgid(task: *const u8) -> Result<u32, u32> {
    let parent = read::<*const u8>(task, config!(task.real_parent))?;
    read::<u32>(parent, config!(task.tgid))
}

/// The task's cgroup v2 id: task->cgroups->dfl_cgrp->kn->id.
pub(crate) fn task_cgroup_v2_id(task: *const u8) -> Result<u64, u32> {
    let css_set = read::<*const u8>(task, config!(task.cgroups))?;
    let cgroup = read::<*const u8>(css_set, config!(task.css_set_dfl_cgrp))?;
    let kn = read::<*const u8>(cgroup, config!(task.cgroup_kn))?;
    read::<u64>(kn, config!(task.kernfs_node_id))
}

pub(crate) fn bpf_ktime_get_boot_ns_now() -> u64 {
    // SAFETY: takes no pointers and cannot fail.
    unsafe { bpf_ktime_get_boot_ns() }
}
