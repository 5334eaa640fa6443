//! The pipeline: ring buffer → decode → process table → filter → output.
//! Loads, attaches, runs until SIGINT/SIGTERM, detaches, and summarises.

use std::{
    collections::BTreeMap,
    io::{self, IsTerminal as _, Write},
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use anyhow::{Context as _, Result};
use guard_common::{EventKind, KIND_SLOTS};
use serde_json::json;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot},
};

use crate::{
    cgroup::{Hierarchies, is_within},
    cli::{Args, Color},
    decode::Event,
    loader::{self, LoadOptions},
    output::{Context, Format, Output, WallClock},
    proctable::{ProcInfo, ProcessTable, default_proc_root},
    source::{self, KernelDrops, SourceStats},
};

/// Which processes the stream (and later every action) covers.
#[derive(Clone, Debug, Default)]
pub struct Scope {
    /// (hierarchy index, cgroup directory).
    pub cgroups: Vec<(usize, String)>,
}

impl Scope {
    /// Resolves `--cgroup` paths; the first one's hierarchy becomes primary.
    pub fn resolve(paths: &[std::path::PathBuf], hierarchies: &mut Hierarchies) -> Result<Self> {
        let mut cgroups = Vec::new();
        for path in paths {
            cgroups.push(
                hierarchies
                    .resolve_dir(path)
                    .with_context(|| format!("--cgroup {}", path.display()))?,
            );
        }
        if let Some(&(index, _)) = cgroups.first() {
            hierarchies.primary = index;
        }
        Ok(Scope { cgroups })
    }

    pub fn contains(&self, process: Option<&ProcInfo>) -> bool {
        match process {
            Some(p) => self.contains_cgroups(&p.cgroups),
            None => self.cgroups.is_empty(),
        }
    }

    /// Whether a process with these cgroups is in scope (no scope: all).
    pub fn contains_cgroups(&self, set: &crate::cgroup::CgroupSet) -> bool {
        self.cgroups.is_empty()
            || self.cgroups.iter().any(|(index, dir)| {
                set.get(*index)
                    .and_then(Option::as_ref)
                    .is_some_and(|own| is_within(own, dir))
            })
    }
}

/// How the run ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    Signal,
    /// Whoever read stdout went away (`guard | head`): end quietly.
    BrokenPipe,
}

struct Counters {
    seen: [u64; KIND_SLOTS as usize],
    shown: u64,
}

pub async fn run(args: Args) -> Result<Ending> {
    let mut hierarchies = Hierarchies::discover()?;
    let scope = Scope::resolve(&args.cgroup, &mut hierarchies)?;
    let hierarchies = Arc::new(hierarchies);
    let primary = hierarchies.primary;

    let (mut loaded, maps) = loader::load(&LoadOptions {
        btf: args.btf.clone(),
        ring_buffer_bytes: args.ring_buffer_mib << 20,
        kinds: args.events.0.clone(),
    })?;

    // Start reading before attaching, so start-up loses nothing.
    let (tx, mut rx) = mpsc::channel::<Event>(args.queue as usize);
    let stats = Arc::new(SourceStats::default());
    let (stop_reader, stop_rx) = oneshot::channel();
    let reader = source::spawn_reader(maps.ring, tx, stats.clone(), stop_rx)?;
    let report = loaded.attach()?;

    let mut table = ProcessTable::new(hierarchies.clone(), default_proc_root());
    table.seed();

    let color = match args.color {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => io::stdout().is_terminal(),
    };
    let format = if args.json {
        Format::Json
    } else {
        Format::Text { color }
    };
    let mut out = Output::new(
        io::BufWriter::with_capacity(64 * 1024, io::stdout().lock()),
        format,
        WallClock::now(),
    );

    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;

    tracing::info!(
        "ready: {} probes attached, {} processes known, cgroup paths from {}",
        report.attached.len(),
        table.len(),
        hierarchies.primary().mount.display()
    );
    let start = out.record(
        "start",
        &[
            ("version", json!(env!("CARGO_PKG_VERSION"))),
            ("pid", json!(std::process::id())),
            ("probes", json!(report.attached)),
            (
                "skipped",
                json!(
                    report
                        .skipped
                        .iter()
                        .map(|(p, why)| json!({"probe": p, "reason": why}))
                        .collect::<Vec<_>>()
                ),
            ),
            ("cgroup_hierarchy", json!(hierarchies.primary().mount)),
            (
                "scope",
                json!(scope.cgroups.iter().map(|(_, d)| d).collect::<Vec<_>>()),
            ),
            ("processes", json!(table.len())),
        ],
    );
    let mut broken = check_pipe(start.and_then(|()| out.flush()))?;

    let mut counters = Counters {
        seen: [0; KIND_SLOTS as usize],
        shown: 0,
    };
    let mut reported = KernelDrops::default();
    let mut reported_queue = 0u64;
    let mut tick = tokio::time::interval(Duration::from_secs(1));

    let mut stopped_by_signal = false;
    while !broken {
        tokio::select! {
            _ = sigint.recv() => { stopped_by_signal = true; break }
            _ = sigterm.recv() => { stopped_by_signal = true; break }
            _ = tick.tick() => {
                let result = report_losses(&maps.drops, &stats, &mut reported, &mut reported_queue, &mut table, &mut out);
                broken = check_pipe(result)?;
            }
            event = rx.recv() => {
                let Some(event) = event else { break };
                let mut result = handle(&event, &args, &scope, primary, &mut table, &mut counters, &mut out);
                // Take whatever else is queued, then flush once.
                while result.is_ok() && let Ok(event) = rx.try_recv() {
                    result = handle(&event, &args, &scope, primary, &mut table, &mut counters, &mut out);
                }
                broken = check_pipe(result.and_then(|()| out.flush()))?;
            }
        }
    }

    // Detach every probe, then take what the reader still holds.
    drop(loaded);
    let _ = stop_reader.send(());
    while let Some(event) = rx.recv().await {
        if broken {
            continue;
        }
        let result = handle(
            &event,
            &args,
            &scope,
            primary,
            &mut table,
            &mut counters,
            &mut out,
        );
        broken = check_pipe(result)?;
    }
    let _ = reader.await;
    if broken {
        return Ok(Ending::BrokenPipe);
    }

    let drops = KernelDrops::read(&maps.drops)?;
    let queue_full = stats.queue_full.load(Ordering::Relaxed);
    let seen: BTreeMap<&str, u64> = EventKind::ALL
        .iter()
        .map(|k| (k.name(), counters.seen[*k as usize]))
        .collect();
    let summary = out.record(
        "summary",
        &[
            ("seen", json!(seen)),
            ("shown", json!(counters.shown)),
            ("lost", json!(drops.total() + queue_full)),
            ("lost_ring_full", KernelDrops::by_kind(&drops.ring_full)),
            ("lost_read_failed", KernelDrops::by_kind(&drops.read_failed)),
            ("lost_queue_full", json!(queue_full)),
            (
                "undecodable",
                json!(stats.undecodable.load(Ordering::Relaxed)),
            ),
        ],
    );
    if check_pipe(summary.and_then(|()| out.flush()))? {
        return Ok(Ending::BrokenPipe);
    }
    Ok(if stopped_by_signal {
        Ending::Signal
    } else {
        Ending::BrokenPipe
    })
}

/// Applies one event to the table and shows it when it passes the filters.
fn handle(
    event: &Event,
    args: &Args,
    scope: &Scope,
    primary: usize,
    table: &mut ProcessTable,
    counters: &mut Counters,
    out: &mut Output<impl Write>,
) -> io::Result<()> {
    let kind = event.kind();
    counters.seen[kind as usize] += 1;
    let subject = table.apply(event);
    if !args.events.contains(kind)
        || (event.is_thread_level() && !args.threads)
        || !scope.contains(subject.as_ref())
    {
        return Ok(());
    }
    let ppid = match event {
        Event::Fork(f) => Some(f.child_ppid),
        Event::Exit(e) => Some(e.ppid),
        _ => subject.as_ref().map(|p| p.ppid),
    };
    let ctx = Context {
        comm: subject.as_ref().map(|p| p.comm),
        ppid,
        parent_comm: ppid.and_then(|p| table.get(p)).map(|p| p.comm),
        cgroup: subject
            .as_ref()
            .and_then(|p| p.cgroup(primary))
            .map(|s| &**s),
        age_ns: match (event, &subject) {
            (Event::Exit(e), Some(p)) if p.start_boot_ns > 0 => {
                Some(e.boot_ns.saturating_sub(p.start_boot_ns))
            }
            _ => None,
        },
    };
    counters.shown += 1;
    out.event(event, &ctx)
}

/// Reports kernel- and queue-side losses that grew since the last report,
/// as a `lost` record and a warning; after a loss, drops table entries whose
/// exit may have been missed.
fn report_losses(
    drops: &aya::maps::PerCpuArray<aya::maps::MapData, u64>,
    stats: &SourceStats,
    reported: &mut KernelDrops,
    reported_queue: &mut u64,
    table: &mut ProcessTable,
    out: &mut Output<impl Write>,
) -> io::Result<()> {
    let Ok(now) = KernelDrops::read(drops) else {
        return Ok(());
    };
    let queue = stats.queue_full.load(Ordering::Relaxed);
    let delta = now.since(reported);
    let queue_delta = queue - *reported_queue;
    if delta.total() == 0 && queue_delta == 0 {
        return Ok(());
    }
    *reported = now;
    *reported_queue = queue;
    let swept = table.sweep();
    tracing::warn!(
        "lost {} events in the kernel (ring buffer full: raise --ring-buffer-mib) and {queue_delta} in the \
         agent's queue (raise --queue); dropped {swept} stale process-table entries",
        delta.total()
    );
    out.record(
        "lost",
        &[
            ("ring_full", KernelDrops::by_kind(&delta.ring_full)),
            ("read_failed", KernelDrops::by_kind(&delta.read_failed)),
            ("queue_full", json!(queue_delta)),
        ],
    )?;
    out.flush()
}

/// Ok(true) when stdout's reader has gone; other write errors are errors.
fn check_pipe(result: io::Result<()>) -> Result<bool> {
    match result {
        Ok(()) => Ok(false),
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => Ok(true),
        Err(err) => Err(err).context("writing to stdout"),
    }
}
