//! What the loop reports besides records: losses, a failed stdout, a
//! scope cgroup removed or created again.

use std::{
    io::{self, Write},
    sync::atomic::Ordering,
};

use anyhow::Result;

use crate::{
    cli::Args,
    host::clock::WallClock,
    kernel::source::{KernelDrops, SourceStats},
    output::Output,
    pipeline::Pipeline,
    respond::{act::LiveSystem, kernel_scope, policy::ActionKind},
};

/// Reports kernel- and queue-side losses that grew since the last report,
/// as a `lost` record and a warning; after a loss, recounts the pipeline's
/// populations.
pub(super) fn report_losses(
    drops: &aya::maps::PerCpuArray<aya::maps::MapData, u64>,
    stats: &SourceStats,
    reported: &mut KernelDrops,
    reported_queue: &mut u64,
    pipe: &mut Pipeline<impl Write>,
) -> io::Result<()> {
    let Ok(now) = KernelDrops::read(drops) else {
        return Ok(());
    };
    let queue = stats.queue_full.load(Ordering::Relaxed);
    let delta = now.since(reported);
    let queue_delta = queue - *reported_queue;
    if delta.tracking_full > 0 {
        tracing::warn!(
            "{} tasks blocked while the kernel's table of blocked tasks was full: they are not \
             tracked",
            delta.tracking_full
        );
    }
    if delta.total() == 0 && queue_delta == 0 {
        *reported = now;
        return Ok(());
    }
    *reported = now;
    *reported_queue = queue;
    pipe.recount_after_losses(WallClock::boot_ns_now());
    tracing::warn!(
        "lost {} events in the kernel (ring buffer full: raise --ring-buffer-mib) and {queue_delta} in the \
         agent's queue (raise --queue)",
        delta.total()
    );
    pipe.out.record(&crate::output::record::Lost {
        ring_full: KernelDrops::by_kind(&delta.ring_full),
        read_failed: KernelDrops::by_kind(&delta.read_failed),
        queue_full: queue_delta,
        blocked_untracked: delta.tracking_full,
    })?;
    pipe.out.flush()
}

/// Keeps the fork probe's scope on the listed cgroup directories when one
/// is removed or created again (a service restart), saying so loudly.
pub(super) fn follow_scope(watch: &mut kernel_scope::ScopeWatch, system: &LiveSystem) {
    if watch.is_empty() {
        return;
    }
    for change in watch.check(kernel_scope::cgroup_dir_id) {
        match &change {
            kernel_scope::ScopeChange::Removed { dir } => tracing::warn!(
                "cgroup {dir} was removed: the fork probe contains nothing there until it is \
                 created again (guard follows it then)"
            ),
            kernel_scope::ScopeChange::Recreated { dir, .. } => {
                match system.follow_scope(&change) {
                    Ok(()) => tracing::warn!(
                        "cgroup {dir} was created again: the fork probe's scope follows it"
                    ),
                    Err(err) => tracing::error!(
                        "cgroup {dir} was created again, but the fork probe cannot follow it \
                         ({err:#}): only the agent watches it now"
                    ),
                }
            }
        }
    }
}

/// Whether the fork, memory or crash-loop guard signals anything.
pub(super) fn enforcing(args: &Args) -> bool {
    !args.dry_run
        && (args.fork_action != ActionKind::Log
            || args.mem_action != ActionKind::Log
            || args.leak_action != ActionKind::Log
            || args.crashloop_action != crate::cli::CrashLoopAction::Log)
}

/// What a failed stdout means. A tracer whose reader went away (`guard |
/// head`) ends quietly, and one whose stdout fails otherwise ends with the
/// error. An agent that enforces goes on enforcing without its output: its
/// protection must not hang on a log reader. It says so once on stderr, and
/// counts every record it no longer writes.
pub(super) struct OutputWatch {
    pub(super) enforcing: bool,
    pub(super) warned: bool,
}

impl OutputWatch {
    /// Ok(true) when the run should end quietly.
    pub(super) fn ended<W: Write>(&mut self, out: &Output<W>) -> Result<bool> {
        let Some(err) = out.failure() else {
            return Ok(false);
        };
        if self.enforcing {
            if !self.warned {
                self.warned = true;
                tracing::error!(
                    "writing stdout failed ({err}): guard goes on enforcing without writing \
                     records, counting them as dropped; stop it with SIGTERM"
                );
            }
            return Ok(false);
        }
        if err.kind() == io::ErrorKind::BrokenPipe {
            return Ok(true);
        }
        Err(anyhow::anyhow!("writing to stdout: {err}"))
    }
}

/// What `--metrics` shows, read off the pipeline and the loss counters.
pub(super) fn metrics_snapshot(
    drops: &aya::maps::PerCpuArray<aya::maps::MapData, u64>,
    stats: &SourceStats,
    pipe: &Pipeline<impl Write>,
    probes: usize,
) -> crate::output::metrics::Snapshot {
    let kernel = KernelDrops::read(drops).unwrap_or_default();
    let mut lost = Vec::new();
    for kind in guard_common::EventKind::ALL {
        let i = kind as usize;
        lost.push((kind.name(), "ring_full", kernel.ring_full[i]));
        lost.push((kind.name(), "read_failed", kernel.read_failed[i]));
    }
    lost.push((
        "all",
        "queue_full",
        stats.queue_full.load(Ordering::Relaxed),
    ));
    let own = crate::host::procfs::own_usage();
    crate::output::metrics::Snapshot {
        seen: pipe.seen_by_kind().into_iter().collect(),
        lost,
        tally: pipe.out.tally.clone(),
        pids: pipe
            .detectors
            .fork
            .pids_views()
            .into_iter()
            .map(|v| (v.cgroup.to_string(), v.current, v.limit, v.eta_secs))
            .collect(),
        memory: pipe
            .detectors
            .memory
            .pool_views()
            .into_iter()
            .map(|(pool, usage, eta)| (pool.to_string(), usage.unreclaimable, usage.limit, eta))
            .collect(),
        blocked_now: pipe.detectors.blocked.blocked_now() as u64,
        cpu_seconds: own.cpu_seconds,
        rss_bytes: own.rss_bytes,
        probes,
    }
}
