//! Wiring: loads and attaches the probes, starts the reader, feeds the
//! pipeline events and ticks, runs the actions it requests, and on
//! SIGINT/SIGTERM detaches and summarises.

use std::{
    io::{self, IsTerminal as _, Write},
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot},
};

pub mod budget;
mod notify;
mod priority;
mod report;

pub use self::priority::set_realtime;
use self::{
    priority::harden_self,
    report::{OutputWatch, enforcing, follow_scope, metrics_snapshot, report_losses},
};
use crate::{
    cli::{Args, Color},
    detect::{
        Detectors,
        blocked::{BlockedDetector, BlockedRules},
        crashloop::{CrashLoopDetector, CrashLoopRules},
        fork::ForkDetector,
        leak::LeakDetector,
        memory::{MemoryDetector, MemoryRules},
        switches::{Detector, Ignore},
    },
    host::cgroup::Hierarchies,
    host::clock::WallClock,
    host::identity::TrustedExes,
    host::proctable::{ProcessTable, default_proc_root},
    host::scope::Scope,
    kernel::decode::Event,
    kernel::loader::{self, LoadOptions},
    kernel::source::{self, BlockedMaps, KernelDrops, SourceStats},
    output::{Format, Output, ThreadedStdout, record},
    pipeline::{ActionRequest, Pipeline, Settings},
    pipeline::{crashloop::CrashLoopWatch, leak::LeakWatch},
    respond::act::{LiveSystem, Outcome, ResponseMaps, System, contain},
    respond::kernel_scope,
    respond::kernel_scope::BudgetLimits,
    respond::policy::ActionKind,
    respond::protect::Protection,
};

/// How the run ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    Signal,
    /// Whoever read stdout went away (`guard | head`): end quietly.
    BrokenPipe,
}

/// Longest an event line waits before it is handed to the stdout writer:
/// one write (and one wakeup of the writer and of the reader of stdout) per
/// this interval at most, instead of one per batch of events.
const FLUSH_DELAY: Duration = Duration::from_millis(20);

/// How often the trusted executables are looked for again (an upgrade
/// replaces a service manager's inode); SIGHUP looks at once.
const TRUSTED_RESCAN: Duration = Duration::from_secs(60);

/// SIGHUP: reads the config file again. Its policies apply at once; a
/// change to its flags needs a restart (the probes and maps were set up
/// with them), which it says; a file that does not parse or check keeps
/// the configuration running and says why.
fn reload_config(
    path: &std::path::Path,
    flags: &[std::ffi::OsString],
    insecure: bool,
    pipe: &mut Pipeline<ThreadedStdout>,
) {
    use clap::CommandFactory as _;
    let file = match crate::cli::config::load(path, &Args::command(), insecure) {
        Ok(file) => file,
        Err(err) => {
            tracing::warn!("SIGHUP: keeping the running configuration: {err}");
            return;
        }
    };
    let policies = match crate::respond::policy::Policies::new(file.policies.clone()) {
        Ok(p) => p,
        Err(err) => {
            tracing::warn!(
                "SIGHUP: keeping the running configuration: {}: {err}",
                path.display()
            );
            return;
        }
    };
    let count = file.policies.len();
    pipe.settings.policies = policies;
    tracing::info!(
        "SIGHUP: {} read again; {count} policies apply now",
        path.display()
    );
    if file.args != flags {
        tracing::warn!(
            "SIGHUP: the flags in {} changed; they apply when guard restarts (policies apply \
             now)",
            path.display()
        );
    }
}

/// Longest the pipeline works through queued batches before it looks at
/// signals, actions and ticks again.
const BATCH_TIME: Duration = Duration::from_millis(50);

/// Longest the agent spends on events still queued once it is asked to
/// stop.
const EXIT_DRAIN: Duration = Duration::from_secs(2);

/// How long one containment may take before it reports what it got.
const ACTION_DEADLINE: Duration = Duration::from_secs(3);

/// The service managers' and `--protect`ed programs' executables, by
/// inode; an error when a `--protect`ed name or path is no trusted
/// executable (protecting it by name would protect anything so named).
fn trusted_executables(protect: &[crate::respond::protect::Protected]) -> Result<TrustedExes> {
    let scan = crate::respond::protect::scan_trusted(protect);
    let asked: Vec<&String> = scan
        .missing
        .iter()
        .filter(|m| !crate::respond::protect::SUPERVISORS.contains(&m.as_str()))
        .collect();
    if let Some(missing) = asked.first() {
        bail!(
            "--protect {missing}: no executable of that name owned by root in root's \
             directories ({}); give the program's path (--protect /opt/app/bin/{missing}, \
             owned by root and writable by no one else), a pid, or a cgroup directory",
            crate::host::identity::TRUSTED_DIRS.join(", ")
        );
    }
    tracing::debug!("{} trusted executables", scan.found.len());
    Ok(TrustedExes::new(scan.found))
}

pub async fn run(args: Args) -> Result<Ending> {
    let mut hierarchies = Hierarchies::discover()?;
    let scope = Scope::resolve(&args.cgroup, &mut hierarchies)?;
    let hierarchies = Arc::new(hierarchies);
    let rules = args.fork_rules();
    let ignore_rules = args.ignore_rules();
    let policies = crate::respond::policy::Policies::new(args.policies.clone())
        .map_err(|e| anyhow::anyhow!("config file: {e}"))?;
    // A fork guard switched off enforces nothing, in the kernel either.
    // Otherwise the probe's budgets signal with the strongest action any
    // policy or the flag asks for; cgroups whose action is `log` are exempt
    // there.
    let fork_action = if !args.runs(Detector::Fork) {
        ActionKind::Log
    } else {
        policies.strongest_fork_action(args.fork_action)
    };
    if let Some(command) = &args.on_alert {
        match crate::respond::hook::check_command(command) {
            Ok(()) => {}
            Err(why) if args.insecure_config => {
                tracing::warn!("--insecure-config: running the hook although {why}");
            }
            Err(why) => bail!(why),
        }
    }
    let fds = crate::respond::act::raise_fd_limit();
    tracing::debug!("descriptor limit {fds}");
    let guard_chain = Protection::own_chain();
    let trusted = trusted_executables(&args.protect)?;
    let kernel_scope = kernel_scope::plan(&kernel_scope::Inputs {
        action: fork_action,
        dry_run: args.dry_run,
        rule: BudgetLimits::new(&rules, fork_action),
        scope: &scope,
        protect: &args.protect,
        guard_chain: &guard_chain.iter().copied().collect::<Vec<_>>(),
        trusted: &trusted.ids(),
        hierarchies: &hierarchies,
    });
    let kernel_tags = kernel_scope.rule.is_some();
    let kernel_filter = kernel_scope.filter;
    match &kernel_scope.off_because {
        None => tracing::info!(
            "the fork probe applies the explosion rule to every subtree in scope by itself"
        ),
        Some(why) if fork_action != ActionKind::Log && !args.dry_run => tracing::warn!(
            "the fork probe watches only subtrees the agent suspects ({why}); a bomb may \
             get further before it is condemned"
        ),
        Some(why) => tracing::debug!("the fork probe does not tag by itself: {why}"),
    }

    if kernel_scope.filter {
        tracing::info!("the probes drop the events of tasks outside --cgroup");
    }
    let mut scope_watch = if kernel_scope.hierarchy.is_some() {
        kernel_scope::ScopeWatch::new(&kernel_scope, &kernel_scope.cgroup_ids()?)
    } else {
        kernel_scope::ScopeWatch::default()
    };
    let (mut loaded, maps) = loader::load(&LoadOptions {
        btf: args.btf.clone(),
        ring_buffer_bytes: args.ring_buffer_mib << 20,
        // Alerts only (`--events none`): the detectors still need every
        // probe.
        kinds: if args.events.0.is_empty() {
            guard_common::EventKind::ALL.into_iter().collect()
        } else {
            args.events.0.clone()
        },
        memory: crate::kernel::probes::MemoryTunables {
            rss_step_bytes: args.rss_step_mib << 20,
            reclaim_stall_us: args.reclaim_stall_ms * 1000,
        },
        kernel_scope,
    })?;
    let loader::Maps {
        ring,
        drops,
        lineage,
        condemned,
        budgets,
        blocked,
        reported,
        scope: scope_map,
        scope_cache,
        protected_pids,
        protected_exes,
    } = maps;
    let mut blocked_maps = BlockedMaps::new(blocked, reported)?;
    let protection = Protection::new(
        guard_chain,
        args.protect.clone(),
        scope.clone(),
        trusted.clone(),
    );
    let system = Arc::new(LiveSystem::new(
        ResponseMaps {
            lineage,
            condemned,
            budgets,
            protected_pids,
            protected_exes,
            scope: kernel_scope::ScopeMaps::new(scope_map, scope_cache)?,
        },
        protection.clone(),
        hierarchies.clone(),
    )?);

    // Start reading before attaching, so start-up loses nothing.
    let stats = Arc::new(SourceStats::default());
    let (stop_reader, stop_rx) = oneshot::channel();
    let (reader, mut rx) = source::spawn_reader(ring, args.queue as usize, stats.clone(), stop_rx)?;
    // Cgroups the fork detector ignores, the fork probe leaves alone from
    // its first fork on (later ones, as processes enter them).
    let fork_ignore = Ignore::for_detector(&ignore_rules, Detector::Fork);
    let exempt_cgroups = if kernel_tags && (!fork_ignore.is_empty() || !policies.is_empty()) {
        // The hierarchy the probe reads (see `kernel_scope::plan`).
        let index = scope
            .cgroups
            .first()
            .map_or_else(|| hierarchies.pids_index(), |&(i, _)| i);
        let roots: Vec<std::path::PathBuf> = if scope.cgroups.is_empty() {
            vec![hierarchies.list[index].mount.clone()]
        } else {
            scope
                .cgroups
                .iter()
                .filter(|(i, _)| *i == index)
                .map(|(_, dir)| dir.into())
                .collect()
        };
        let policy_log = |d: &str| {
            policies
                .action(Detector::Fork, Some(d))
                .unwrap_or(args.fork_action)
                == ActionKind::Log
        };
        let dirs = kernel_scope::matching_cgroups(&roots, |d| {
            fork_ignore.cgroup(Some(d)) || policy_log(d)
        });
        for dir in &dirs {
            system.exempt_cgroup(dir);
        }
        dirs
    } else {
        Vec::new()
    };
    let report = loaded.attach()?;

    let mut table = ProcessTable::new(hierarchies.clone(), default_proc_root());
    table.seed();
    if kernel_filter {
        // No event of theirs will come: an entry left would go stale, and
        // its pid could later name another process moving in.
        table.forget_if(|p| !scope.contains(Some(p)));
    }

    let color = match args.color {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => io::stdout().is_terminal() && !crate::cli::no_color_env(),
    };
    let format = if args.json {
        Format::Json
    } else {
        Format::Text { color }
    };
    let mut reopen_output = None;
    let mut output_failed = None;
    let stdout = match &args.output {
        Some(path) => {
            let file = crate::output::ReopeningFile::open(path).with_context(|| {
                format!("--output {}: cannot open it for appending", path.display())
            })?;
            reopen_output = Some(file.reopen_flag());
            output_failed = Some(file.failed_lines());
            ThreadedStdout::spawn_to(file)
        }
        None => ThreadedStdout::spawn(),
    }
    .context("starting the output writer")?;
    let backlog = stdout.backlog();
    let mut out = Output::new(stdout, format, WallClock::now()).with_backlog(backlog);
    if let Some(command) = &args.on_alert {
        out = out.with_hooks(
            crate::respond::hook::Hooks::spawn(command.clone())
                .context("starting the --on-alert thread")?,
        );
    }
    let settings = Settings {
        events: args.events.clone(),
        threads: args.threads,
        // The flag's (policies may differ per cgroup; see `fork_action`
        // above for the probe's).
        fork_action: if args.runs(Detector::Fork) {
            args.fork_action
        } else {
            ActionKind::Log
        },
        mem_action: args.mem_action,
        crashloop_action: args.crashloop_action.into(),
        off: Detector::ALL
            .into_iter()
            .filter(|&d| !args.runs(d))
            .collect(),
        ignore_fork: fork_ignore,
        ignore_memory: Ignore::for_detector(&ignore_rules, Detector::Memory),
        ignore_blocked: Ignore::for_detector(&ignore_rules, Detector::Blocked),
        ignore_leak: Ignore::for_detector(&ignore_rules, Detector::Leak),
        leak_action: args.leak_action,
        dry_run: args.dry_run,
        policies,
        prefer: args.prefer.clone(),
        kernel_tags,
        kernel_filter,
    };
    let processes = table.len();
    let shared: Arc<dyn System + Send + Sync> = system.clone();
    let crashloops = CrashLoopDetector::new(
        // Off: a count never met (the detector is also switched off).
        args.crashloop_rules().unwrap_or(CrashLoopRules {
            count: u32::MAX,
            window_ns: 1_000_000_000,
            max_lifetime_ns: 0,
        }),
        Ignore::for_detector(&ignore_rules, Detector::Crashloop),
    );
    let mut pipe = Pipeline::new(
        settings,
        scope.clone(),
        protection,
        table,
        Detectors {
            fork: ForkDetector::new(rules),
            blocked: BlockedDetector::new(BlockedRules {
                threshold_ns: (args.blocked_threshold * 1e9) as u64,
                storm: args.blocked_storm,
            }),
            memory: MemoryDetector::new(MemoryRules {
                horizon_ns: (args.mem_horizon * 1e9) as u64,
                headroom_pct: args.mem_headroom,
                window_ns: MEMORY_WINDOW.as_nanos() as u64,
                sustain_ns: MEMORY_WINDOW.as_nanos() as u64,
            }),
        },
        out,
        Some(shared),
    )
    .with_plugins(vec![
        Box::new(LeakWatch::new(LeakDetector::new(args.leak_rules()))),
        Box::new(CrashLoopWatch::new(crashloops)),
    ]);
    pipe.exempted(&exempt_cgroups);
    pipe.seed_detector(WallClock::boot_ns_now());
    let drops = Arc::new(drops);
    let mut pipe = pipe.with_loss_counter(source::loss_counter(drops.clone(), stats.clone()));

    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;

    // After loading: see `harden_self`.
    let hardening = harden_self();
    tracing::info!(
        "ready: {} probes attached, {processes} processes known, cgroup paths from {}",
        report.attached.len(),
        hierarchies.primary().mount.display()
    );
    let start = pipe.out.record(&record::Start {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pid: std::process::id(),
        probes: report.attached.clone(),
        skipped: report
            .skipped
            .iter()
            .map(|(probe, reason)| record::Skipped {
                probe: probe.clone(),
                reason: reason.clone(),
            })
            .collect(),
        cgroup_hierarchy: hierarchies.primary().mount.display().to_string(),
        scope: scope.cgroups.iter().map(|(_, d)| d.to_string()).collect(),
        processes: processes as u64,
        fork_action,
        mem_action: args.mem_action,
        off: Detector::ALL
            .into_iter()
            .filter(|&d| !args.runs(d))
            .collect(),
        dry_run: args.dry_run,
        memory_locked: hardening.memory_locked,
        rss_bytes: crate::host::procfs::own_usage().rss_bytes,
        oom_score_adj: hardening.oom_score_adj,
    });
    start.and_then(|()| pipe.out.flush())?;
    let metrics = match args.metrics {
        Some(addr) => {
            let shared = Arc::new(std::sync::Mutex::new(
                crate::output::metrics::Metrics::default(),
            ));
            if let Some(bound) = crate::output::metrics::serve(addr, shared.clone()).await {
                tracing::info!("metrics at http://{bound}/metrics");
            }
            Some(shared)
        }
        None => None,
    };
    let service = notify::ServiceManager::from_env();
    service.ready(&format!(
        "{} probes attached, {processes} processes known",
        report.attached.len()
    ));
    // Pinged from this loop only: if the loop is stuck, the pings stop.
    let mut watchdog =
        tokio::time::interval(service.ping_every.unwrap_or(Duration::from_secs(3600)));
    let mut output = OutputWatch {
        enforcing: enforcing(&args),
        warned: false,
    };
    let mut broken = output.ended(&pipe.out)?;

    let mut reported = KernelDrops::default();
    let mut reported_queue = 0u64;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // An upgraded service manager is a new inode: look again now and then.
    let mut rescan = tokio::time::interval(TRUSTED_RESCAN);
    rescan.tick().await;
    let mut sample = tokio::time::interval(SAMPLE_INTERVAL);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(ActionRequest, Outcome)>();
    // One long-lived action thread, started now: creating a thread when a
    // bomb is already running costs milliseconds (its stack is populated and
    // locked under mlockall) that the bomb does not give.
    let (act_tx, act_rx) = std::sync::mpsc::channel::<ActionRequest>();
    let realtime = !args.no_realtime;
    let mut raised = false;
    let actor = {
        let system = system.clone();
        let done = done_tx.clone();
        std::thread::Builder::new()
            .name("guard-act".into())
            .spawn(move || {
                // Idle until a bomb is on: it may as well preempt it then.
                if realtime {
                    set_realtime(true);
                }
                for request in act_rx {
                    let outcome = contain(
                        &*system,
                        request.tag,
                        &request.members,
                        request.kind,
                        ACTION_DEADLINE,
                    );
                    if done.send((request, outcome)).is_err() {
                        break;
                    }
                }
            })
            .context("starting the action thread")?
    };
    let run_actions = |requests: Vec<ActionRequest>| {
        for request in requests {
            let _ = act_tx.send(request);
        }
    };

    let mut stopped_by_signal = false;
    // When event lines written since the last flush are due out.
    let mut flush_at: Option<tokio::time::Instant> = None;
    let mut budget = budget::CpuBudget::new(f64::from(args.cpu_limit) / 100.0, 1_000_000_000);
    let mut warned_budget = false;
    while !broken {
        broken = output.ended(&pipe.out)?;
        tokio::select! {
            _ = tokio::time::sleep_until(flush_at.unwrap_or_else(tokio::time::Instant::now)), if flush_at.is_some() => {
                flush_at = None;
                pipe.out.flush()?;
            }
            _ = sigint.recv() => { stopped_by_signal = true; break }
            _ = sigterm.recv() => { stopped_by_signal = true; break }
            _ = sighup.recv() => {
                if let Some(flag) = &reopen_output {
                    flag.store(true, Ordering::Relaxed);
                    tracing::info!("SIGHUP: opening the output file again at its next write");
                }
                if let Some((path, flags)) = &args.config_file {
                    reload_config(path, flags, args.insecure_config, &mut pipe);
                }
                system.refresh_trusted();
            }
            _ = watchdog.tick(), if service.ping_every.is_some() => service.alive(),
            _ = rescan.tick() => system.refresh_trusted(),
            _ = tick.tick() => {
                report_losses(&drops, &stats, &mut reported, &mut reported_queue, &mut pipe)?;
                if let Some(metrics) = &metrics {
                    let snapshot = metrics_snapshot(&drops, &stats, &pipe);
                    if let Ok(m) = metrics.lock() {
                        m.update(&snapshot);
                    }
                }
                pipe.sweep_if_caught_up(WallClock::boot_ns_now());
                for tag in system.settle() {
                    tracing::info!("subtree {tag}: every member verified gone; condemnation released");
                }
            }
            _ = sample.tick() => {
                follow_scope(&mut scope_watch, &system);
                pipe.sample_pids(WallClock::boot_ns_now());
                pipe.sample_memory(WallClock::boot_ns_now());
                let blocked_now = blocked_maps.snapshot();
                let book = pipe.sample_blocked(WallClock::boot_ns_now(), &blocked_now)?;
                blocked_maps.apply(&book);
                run_actions(pipe.check(WallClock::boot_ns_now())?);
            }
            Some((request, outcome)) = done_rx.recv() => {
                run_actions(pipe.action_done(&request, &outcome)?);
            }
            batch = rx.recv() => {
                let Some(mut batch) = batch else { break };
                let mut moved = false;
                // This batch and whatever else is queued (for at most
                // BATCH_TIME: a backlog must not keep signals waiting), then
                // check and flush once.
                let began = std::time::Instant::now();
                loop {
                    for event in &batch {
                        moved |= matches!(event, Event::CgroupAttach(_));
                        pipe.handle(event)?;
                    }
                    if began.elapsed() >= BATCH_TIME {
                        break;
                    }
                    match rx.try_recv() {
                        Some(next) => batch = next,
                        None => break,
                    }
                }
                if moved {
                    // A restarted service's process moving into its new
                    // cgroup: the probe's scope follows before it forks.
                    follow_scope(&mut scope_watch, &system);
                }
                run_actions(pipe.check(WallClock::boot_ns_now())?);
                if pipe.out.unflushed() && flush_at.is_none() {
                    flush_at = Some(tokio::time::Instant::now() + FLUSH_DELAY);
                }
                let busy = pipe.detectors.fork.armed() || pipe.acting();
                let want = realtime && busy;
                if want != raised && set_realtime(want) {
                    raised = want;
                    tracing::debug!("SCHED_FIFO {}", if want { "on" } else { "off" });
                }
                let spend = budget.observe(WallClock::boot_ns_now(), budget::process_cpu_ns());
                let spend = if busy { budget::Spend::Normal } else { spend };
                pipe.out.set_shedding(spend != budget::Spend::Normal);
                if spend != budget::Spend::Normal && !warned_budget {
                    warned_budget = true;
                    tracing::warn!(
                        "guard is over --cpu-limit ({}% of a CPU): event lines are shed \
                         (counted as output_shed), detection goes on",
                        args.cpu_limit
                    );
                }
                if let budget::Spend::Pause(pause) = spend {
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    service.stopping();
    // Let a running action finish and report it (its follow-ups are not
    // started: guard is stopping), then detach every probe and take what
    // the reader still holds.
    drop(act_tx);
    let _ = actor.join();
    while let Ok((request, outcome)) = done_rx.try_recv() {
        pipe.action_done(&request, &outcome)?;
    }
    drop(loaded);
    let _ = stop_reader.send(());
    // What the reader still holds, for at most EXIT_DRAIN: a backlog must
    // not keep a stop request waiting. The rest is counted.
    let drain_until = tokio::time::Instant::now() + EXIT_DRAIN;
    let mut unread = 0u64;
    loop {
        match tokio::time::timeout_at(drain_until, rx.recv()).await {
            Ok(Some(batch)) => {
                for event in &batch {
                    pipe.handle(event)?;
                }
            }
            Ok(None) => break,
            Err(_) => {
                while let Some(batch) = rx.try_recv() {
                    unread += batch.len() as u64;
                }
                break;
            }
        }
    }
    let _ = tokio::time::timeout(EXIT_DRAIN, reader).await;
    if unread > 0 {
        tracing::warn!("stopped with {unread} events not handled (counted as unread_at_exit)");
    }
    if broken {
        return Ok(Ending::BrokenPipe);
    }

    let kernel = KernelDrops::read(&drops)?;
    let queue_full = stats.queue_full.load(Ordering::Relaxed);
    let own = crate::host::procfs::own_usage();
    let summary = pipe.out.record(&record::Summary {
        seen: pipe
            .seen_by_kind()
            .into_iter()
            .map(|(kind, n)| (kind.to_owned(), n))
            .collect(),
        rss_bytes: own.rss_bytes,
        cpu_seconds: own.cpu_seconds,
        shown: pipe.counters.shown,
        lost: kernel.total() + queue_full,
        lost_ring_full: KernelDrops::by_kind(&kernel.ring_full),
        lost_read_failed: KernelDrops::by_kind(&kernel.read_failed),
        lost_queue_full: queue_full,
        blocked_untracked: kernel.tracking_full,
        undecodable: stats.undecodable.load(Ordering::Relaxed),
        output_dropped: pipe.out.dropped,
        output_write_failed: output_failed.map_or(0, |n| n.load(Ordering::Relaxed)),
        records_dropped: pipe.out.records_dropped,
        output_shed: pipe.out.shed,
        hooks: pipe.out.hook_counts().map(|c| record::HookTally {
            run: c.run.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            skipped: c.skipped.load(Ordering::Relaxed),
            stale: c.stale.load(Ordering::Relaxed),
        }),
        unread_at_exit: unread,
    });
    summary.and_then(|()| pipe.out.flush())?;
    if pipe.out.dropped + pipe.out.records_dropped > 0 {
        tracing::warn!(
            "{} event lines and {} other records were not written: stdout was not read fast \
             enough, or had failed",
            pipe.out.dropped,
            pipe.out.records_dropped
        );
    }
    if output.ended(&pipe.out)? {
        return Ok(Ending::BrokenPipe);
    }
    Ok(if stopped_by_signal {
        Ending::Signal
    } else {
        Ending::BrokenPipe
    })
}

/// Window of each process's growth, and how long a pool's usage must grow
/// at every reading for the memory horizon rule.
const MEMORY_WINDOW: Duration = Duration::from_secs(2);

/// How often cgroup task counts and limits are read for the trend rule (and
/// the detectors checked when no event arrives).
const SAMPLE_INTERVAL: Duration = Duration::from_millis(250);
