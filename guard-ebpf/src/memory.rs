//! The memory probes: resident-memory steps (`rss_stat`) and reclaim
//! stalls.

use core::ptr::read_volatile;

use aya_ebpf::helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task};
use aya_ebpf::macros::raw_tracepoint;
use aya_ebpf::programs::RawTracePointContext;
use guard_common::{EventKind, RSS_STAT_WORDS, ReclaimStallEvent, RssEvent};

use crate::{fork_guard::out_of_view, maps::*, read::*};

// rss_stat: fires from add_mm_counter()/inc_mm_counter() and friends each
// time one of an mm's resident-memory counters changes (a page faulted in,
// unmapped, swapped), in the context of the task changing it (usually the
// mm's own; reclaim and other processes' munmap too, which we skip). Raw
// tracepoint, TP_PROTO(struct mm_struct *mm, int member) since 5.5 (the
// classic record adds curr and the counter's size). The counters are
// `struct percpu_counter rss_stat[NR_MM_COUNTERS]` since 6.2 and an
// `atomic_long_t count[]` before: the agent gives their offset, stride and
// count offset from BTF, and this program copies all four in one read. It
// runs once per page at worst (a 1 GB/s allocator: 250k times a second).
// Steps are of anonymous + shmem memory, what reclaim cannot drop without
// swap: a change of file pages (an exec faulting its program in: most of
// the runs) returns at the first instruction. Otherwise two reads and a
// per-CPU slot; a hash lookup only when the step may have changed, and a
// record only when the process crosses a step.
#[raw_tracepoint(tracepoint = "rss_stat")]
pub fn rss_stat(ctx: RawTracePointContext) -> u32 {
    match try_rss_stat(&ctx) {
        Ok(ret) | Err(ret) => ret,
    }
}

/// `mm_struct`'s counter of file-backed pages (`MM_FILEPAGES`).
const MM_FILEPAGES: u64 = 0;

pub(crate) fn try_rss_stat(ctx: &RawTracePointContext) -> Result<u32, u32> {
    let member: u64 = ctx.arg(1);
    if member & 0xffff_ffff == MM_FILEPAGES {
        return Ok(0);
    }
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
    let step = ((anon + shmem) / step_pages) as u32;
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // The common case, a fault within the step last seen on this CPU: one
    // per-CPU array load. (A stale entry of a dead process whose tgid came
    // back at the same step delays that process's first record to its next
    // step: the agent reads memory from cgroups and /proc meanwhile.)
    let last = RSS_LAST.get_ptr_mut(0);
    let seen = (u64::from(tgid) << 32) | u64::from(step);
    if let Some(last) = last {
        // SAFETY: this CPU's slot of a per-CPU array, valid for the run.
        if unsafe { read_volatile(last) } == seen {
            return Ok(0);
        }
    }
    // A plain u32 with a sentinel, read through a volatile load: the
    // compiler would otherwise build the Option by OR-ing the map value
    // pointer into a register, which the verifier refuses.
    let previous = match RSS_STEP.get_ptr(tgid) {
        // SAFETY: a valid value pointer of the map, read at once.
        Some(value) => unsafe { read_volatile(value) },
        None => u32::MAX,
    };
    if let Some(last) = last {
        // SAFETY: as above; nothing else runs on this CPU meanwhile.
        unsafe { *last = seen };
    }
    if previous == step {
        return Ok(0);
    }
    if RSS_STEP.insert(tgid, step, 0).is_err()
        || (previous == u32::MAX && step == 0)
        || out_of_view(task)
    {
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

pub(crate) fn try_reclaim_end(ctx: &RawTracePointContext) -> Result<u32, u32> {
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
    // SAFETY: returns the current task pointer; no arguments.
    if out_of_view(unsafe { bpf_get_current_task() } as *const u8) {
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
