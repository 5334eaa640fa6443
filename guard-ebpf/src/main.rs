//! guard's kernel side: one small program per tracepoint, each writing one
//! record kind into the `EVENTS` ring buffer.
//!
//! Kernel code stays small: no loops, no policy. Every record that cannot be
//! written is counted in the per-CPU `DROPS` map, so the agent can report it.
//! Per-kernel facts (struct member offsets, the `mark_victim` record layout)
//! come from the agent through the read-only `CONFIG` global.
//!
//! One file per probe family, as kunai's `probes/` and Tetragon's
//! `bpf_enforcer.c` keep them: `process` (fork, exec, exit, cgroup moves),
//! `sched` (D-state tasks, hung tasks), `memory` (rss steps, reclaim
//! stalls), `oom` (the OOM killer's victim); `fork_guard` holds the
//! enforcement the fork probe does, `refuse` the one LSM program (forks of
//! a refused lineage fail); `maps` and `read` what they share.
#![no_std]
#![no_main]
// The BPF target has no compare-and-swap, so core's atomic types lack
// fetch_add; the intrinsic lowers to BPF's atomic add instruction.
#![feature(core_intrinsics)]
#![expect(internal_features, reason = "atomic add on the BPF target (see above)")]
// Inline assembly encodes the one kfunc call (see `kill_task`): aya 0.14
// cannot relocate extern kfunc symbols.
#![feature(asm_experimental_arch)]

macro_rules! config {
    ($($field:ident).+) => {
        // SAFETY: CONFIG is a plain-old-data static that lives for the whole
        // program; the volatile read only stops constant folding.
        unsafe { core::ptr::read_volatile(&raw const crate::maps::CONFIG.$($field).+) }
    };
}

mod fork_guard;
mod maps;
mod memory;
mod oom;
mod process;
mod read;
mod refuse;
mod sched;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
