//! One run of the agent, phase by phase: plan from the flags, load and
//! attach the probes, build the pipeline, announce, loop, drain and
//! summarise. Each phase is a function; the loop's state is [`Running`].

use std::{
    collections::HashSet,
    io::{self, IsTerminal as _},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    sync::{mpsc, oneshot},
};

use super::{
    ACTION_DEADLINE, BATCH_TIME, EXIT_DRAIN, Ending, FLUSH_DELAY, MEMORY_WINDOW, SAMPLE_INTERVAL,
    TRUSTED_RESCAN, budget, notify,
    priority::{Hardening, harden_self, set_realtime},
    reload_config,
    report::{OutputWatch, enforcing, follow_scope, metrics_snapshot, report_losses},
    trusted_executables,
};
use crate::{
    cli::{Args, Color},
    detect::{
        Detectors,
        blocked::{BlockedDetector, BlockedRules},
        crashloop::{CrashLoopDetector, CrashLoopRules},
        fork::{ForkDetector, ForkRules},
        leak::LeakDetector,
        memory::{MemoryDetector, MemoryRules},
        switches::{Detector, Ignore, IgnoreRule},
    },
    host::{
        cgroup::Hierarchies,
        clock::WallClock,
        identity::TrustedExes,
        proctable::{ProcessTable, default_proc_root},
        scope::Scope,
    },
    kernel::{
        decode::Event,
        loader::{self, AttachReport, LoadOptions, Loaded},
        lsm::RefusalSupport,
        source::{self, BlockedMaps, EventQueue, KernelDrops, SourceStats},
    },
    output::{
        Format, Output, ThreadedStdout,
        metrics::Metrics,
        record,
        report::Reports,
        stream::{Listening, Stream},
    },
    pipeline::{
        ActionRequest, Pipeline, ReportBook, Settings, crashloop::CrashLoopWatch, leak::LeakWatch,
    },
    respond::{
        act::{LiveSystem, Outcome, ResponseMaps, System, contain},
        kernel_scope::{self, BudgetLimits, KernelScope},
        policy::{ActionKind, Policies},
        protect::Protection,
        refusal::Ended,
    },
};

/// What the flags resolve to before anything is loaded.
struct Plan {
    hierarchies: Arc<Hierarchies>,
    scope: Scope,
    rules: ForkRules,
    ignore_rules: Vec<IgnoreRule>,
    policies: Policies,
    guard_chain: HashSet<u32>,
    trusted: TrustedExes,
    kernel_scope: KernelScope,
    /// Whether the kernel can refuse forks here (and if not, why).
    refusal: RefusalSupport,
}

/// The kernel side, loaded and attached, and what reads it.
struct Kernel {
    loaded: Loaded,
    report: AttachReport,
    drops: Arc<aya::maps::PerCpuArray<aya::maps::MapData, u64>>,
    stats: Arc<SourceStats>,
    stop_reader: oneshot::Sender<()>,
    reader: tokio::task::JoinHandle<()>,
    rx: EventQueue,
    blocked_maps: BlockedMaps,
    scope_watch: kernel_scope::ScopeWatch,
    system: Arc<LiveSystem>,
    protection: Protection,
    /// Cgroups the fork probe leaves alone from the start.
    exempt_cgroups: ScopeEntries,
    /// Whether forks are refused in the kernel, as attached.
    refusal: RefusalSupport,
}

/// The output file's switches, when `--output` names one.
#[derive(Default)]
struct OutputFile {
    reopen: Option<Arc<AtomicBool>>,
    failed_lines: Option<Arc<AtomicU64>>,
}

pub async fn run(args: Args) -> Result<Ending> {
    let plan = plan(&args)?;
    let fds = crate::respond::act::raise_fd_limit();
    tracing::debug!("descriptor limit {fds}");
    let kernel = load(&args, &plan)?;
    let (pipe, file) = build_pipeline(&args, plan, &kernel)?;
    // After loading: see `harden_self`.
    let hardening = harden_self();
    let mut running = Running::new(&args, pipe, kernel, file, hardening).await?;
    let stop = running.run_loop(&args).await?;
    running.finish(stop).await
}

/// `guard config --check`: the agent's own validation at start (`plan`:
/// cgroups, policies, the hook, protected programs, the kernel's support
/// for the actions asked for), without loading anything; then each
/// policy's matches now. Errors are what the agent would refuse to start
/// with.
pub fn check_config(args: &Args) -> Result<String> {
    let plan = plan(args)?;
    let dirs = plan.hierarchies.directories(1_000_000);
    let (text, warnings) = crate::cli::config::describe_matches(&plan.policies.matching(&dirs));
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    Ok(text)
}

/// Why the loop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    /// SIGINT or SIGTERM.
    Signal,
    /// Whoever read stdout went away.
    Broken,
    /// The reader ended.
    ReaderGone,
}

/// Resolves the flags: cgroups, rules, policies, protection, and what the
/// fork probe will enforce by itself.
fn plan(args: &Args) -> Result<Plan> {
    let mut hierarchies = Hierarchies::discover()?;
    let scope = Scope::resolve(&args.cgroup, &mut hierarchies)?;
    let hierarchies = Arc::new(hierarchies);
    let rules = args.fork_rules();
    let policies = args
        .policies()
        .map_err(|e| anyhow::anyhow!("config file: {e}"))?
        .across(&hierarchies);
    // A fork guard switched off enforces nothing, in the kernel either.
    // Otherwise the probe's budgets signal with the strongest action any
    // policy or the flag asks for, softened per cgroup where a policy asks
    // for less (see `exempt_cgroups`).
    let refusal = refusal_support(args);
    let fork_action = if !args.runs(Detector::Fork) {
        ActionKind::Log
    } else if refusal.available {
        policies.strongest_fork_action(args.fork_action)
    } else {
        policies
            .strongest_fork_action(args.fork_action)
            .without_refusal()
    };
    if let Some(command) = args.hook() {
        match command.check() {
            Ok(()) => {}
            Err((why, true)) if args.insecure_config => {
                tracing::warn!("--insecure-config: running the hook although {why}");
            }
            Err((why, _)) => bail!(why),
        }
    }
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
    Ok(Plan {
        hierarchies,
        scope,
        rules,
        ignore_rules: args.ignore_rules(),
        policies,
        guard_chain,
        trusted,
        kernel_scope,
        refusal,
    })
}

/// Whether the kernel can refuse a lineage's forks here; says what that
/// means for the actions asked for when it cannot.
fn refusal_support(args: &Args) -> RefusalSupport {
    let support = match crate::kernel::btf::Btf::from_file(&args.btf) {
        Ok(btf) => crate::kernel::lsm::support(&btf, args.no_lsm),
        Err(e) => RefusalSupport::unavailable(format!("{e:#}")),
    };
    match &support.why_not {
        None => tracing::info!(
            "the kernel refuses the forks of a lineage guard acts on (BPF LSM: {})",
            support.lsm.as_deref().unwrap_or("?")
        ),
        Some(why) => {
            let asked: Vec<String> = [
                ("--fork-action", args.fork_action),
                ("--leak-action", args.leak_action),
            ]
            .into_iter()
            .chain(args.policies.iter().flat_map(|p| {
                [p.fork_action, p.leak_action]
                    .into_iter()
                    .flatten()
                    .map(|a| ("a policy's action", a))
            }))
            .filter(|(_, a)| a.refuses())
            .map(|(flag, a)| format!("{flag} {} acts as {}", a.name(), a.without_refusal().name()))
            .collect();
            if asked.is_empty() {
                tracing::info!("no refusal here ({why}): stop and kill signal without it");
            } else {
                tracing::warn!(
                    "the kernel cannot refuse forks here: {why}; {}",
                    asked.join(", ")
                );
            }
        }
    }
    support
}

/// Loads the programs and their maps, starts the reader, exempts the
/// cgroups the fork probe must leave alone, and attaches.
fn load(args: &Args, plan: &Plan) -> Result<Kernel> {
    let scope_watch = if plan.kernel_scope.hierarchy.is_some() {
        kernel_scope::ScopeWatch::new(&plan.kernel_scope, &plan.kernel_scope.cgroup_ids()?)
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
        kernel_scope: plan.kernel_scope.clone(),
        refusal: plan.refusal.available,
    })?;
    let loader::Maps {
        ring,
        drops,
        lineage,
        condemned,
        refusals,
        budgets,
        blocked,
        reported,
        scope: scope_map,
        scope_cache,
        protected_pids,
        protected_exes,
    } = maps;
    let blocked_maps = BlockedMaps::new(blocked, reported)?;
    let protection = Protection::new(
        plan.guard_chain.clone(),
        args.protect.clone(),
        plan.scope.clone(),
        plan.trusted.clone(),
    );
    let system = Arc::new(LiveSystem::new(
        ResponseMaps {
            lineage,
            condemned,
            refusals,
            budgets,
            protected_pids,
            protected_exes,
            scope: kernel_scope::ScopeMaps::new(scope_map, scope_cache)?,
        },
        protection.clone(),
        plan.hierarchies.clone(),
    )?);
    // Start reading before attaching, so start-up loses nothing.
    let stats = Arc::new(SourceStats::default());
    let (stop_reader, stop_rx) = oneshot::channel();
    let (reader, rx) = source::spawn_reader(ring, args.queue as usize, stats.clone(), stop_rx)?;
    let exempt_cgroups = exempt_cgroups(args, plan, &system);
    let report = loaded.attach()?;
    if report.refusal {
        system.set_refusing();
    }
    let refusal = match &report.refusal_failed {
        Some(why) => RefusalSupport::unavailable(why.clone()),
        None => plan.refusal.clone(),
    };
    Ok(Kernel {
        loaded,
        report,
        drops: Arc::new(drops),
        stats,
        stop_reader,
        reader,
        rx,
        blocked_maps,
        scope_watch,
        system,
        protection,
        exempt_cgroups,
        refusal,
    })
}

/// What the fork probe is told of cgroups before it attaches.
#[derive(Default)]
struct ScopeEntries {
    /// The directories judged (every cgroup under the scope then).
    judged: Vec<String>,
    /// The `SCOPE` entries written, with their verdicts.
    listed: Vec<(String, u32)>,
    /// The `--protect`ed cgroups.
    protected: Vec<String>,
}

/// The cgroups the fork detector ignores, or whose policy is `log`: the
/// fork probe leaves them alone from its first fork on (later ones, as
/// processes enter them); those whose policy is softer than the probe's
/// own action, which it applies there instead (see
/// `pipeline::kernel_verdict`); and those where the probe's own action
/// holds below one of those (a `kill` policy's cgroup under a `log` one).
/// A directory gets an entry only where its verdict differs from its
/// parent's (the map holds a few hundred), and none that would act below
/// a `--protect`ed cgroup.
fn exempt_cgroups(args: &Args, plan: &Plan, system: &LiveSystem) -> ScopeEntries {
    use guard_common::{SCOPE_IN, SCOPE_PROTECTED};
    let kernel_tags = plan.kernel_scope.rule.is_some();
    let settings = settings(args, plan, plan.policies.clone());
    if !kernel_tags || (settings.ignore_fork.is_empty() && plan.policies.is_empty()) {
        return ScopeEntries::default();
    }
    let (scope, hierarchies) = (&plan.scope, &plan.hierarchies);
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
    let protected: Vec<String> = plan
        .kernel_scope
        .cgroups
        .iter()
        .filter(|(_, v)| *v == SCOPE_PROTECTED)
        .map(|(d, _)| d.clone())
        .collect();
    let under_protected = |d: &str| {
        std::path::Path::new(d)
            .ancestors()
            .any(|a| protected.iter().any(|p| std::path::Path::new(p) == a))
    };
    let verdict = |d: &str| crate::pipeline::kernel_verdict(&settings, d).unwrap_or(SCOPE_IN);
    let entry = |d: &str| -> Option<u32> {
        let v = verdict(d);
        let root = roots.iter().any(|r| r.as_os_str() == d);
        let parent = std::path::Path::new(d).parent().and_then(|p| p.to_str());
        let differs = if root {
            v != SCOPE_IN
        } else {
            parent.is_some_and(|p| verdict(p) != v)
        };
        (differs && !(v == SCOPE_IN && under_protected(d))).then_some(v)
    };
    // A pod whose namespace a policy needs and kubelet has not named yet
    // is left to the pipeline, which judges it once it is named.
    let mut out = ScopeEntries {
        judged: kernel_scope::matching_cgroups(&roots, |d| !settings.policies.awaits_pod_name(d)),
        ..ScopeEntries::default()
    };
    for dir in &out.judged {
        if let Some(v) = entry(dir) {
            system.scope_cgroup(dir, v);
            out.listed.push((dir.clone(), v));
        }
    }
    out.protected = protected;
    out
}

/// The stdout writer (or `--output`'s file) in the chosen format, with the
/// hooks.
fn open_output(args: &Args) -> Result<(Output<ThreadedStdout>, OutputFile)> {
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
    let mut file = OutputFile::default();
    let stdout = match &args.output {
        Some(path) => {
            let out = crate::output::ReopeningFile::open(path).with_context(|| {
                format!("--output {}: cannot open it for appending", path.display())
            })?;
            file.reopen = Some(out.reopen_flag());
            file.failed_lines = Some(out.failed_lines());
            ThreadedStdout::spawn_to(out)
        }
        None => ThreadedStdout::spawn(),
    }
    .context("starting the output writer")?;
    let backlog = stdout.backlog();
    let mut out = Output::new(stdout, format, WallClock::now()).with_backlog(backlog);
    if let Some(name) = &args.hostname {
        out = out.with_host_name(name);
    }
    if let Some(command) = args.hook() {
        out = out.with_hooks(
            crate::respond::hook::Hooks::spawn(command)
                .context("starting the --on-alert thread")?,
        );
    }
    Ok((out, file))
}

/// What the stream shows and what verdicts lead to, from the flags.
fn settings(args: &Args, plan: &Plan, policies: Policies) -> Settings {
    let ignore = |d| Ignore::for_detector(&plan.ignore_rules, d);
    Settings {
        events: args.events.clone(),
        threads: args.threads,
        // The flag's (policies may differ per cgroup: the probe's budgets
        // signal with the strongest, see `plan`).
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
        ignore_fork: ignore(Detector::Fork),
        ignore_memory: ignore(Detector::Memory),
        ignore_blocked: ignore(Detector::Blocked),
        ignore_leak: ignore(Detector::Leak),
        leak_action: args.leak_action,
        dry_run: args.dry_run,
        policies,
        refusal: crate::respond::refusal::RefusalRules {
            grace_ns: args.refuse_grace * 1_000_000_000,
            limit_ns: args.refuse_for * 1_000_000_000,
        },
        refusal_available: plan.refusal.available,
        prefer: args.prefer.clone(),
        kernel_tags: plan.kernel_scope.rule.is_some(),
        kernel_filter: plan.kernel_scope.filter,
    }
}

/// The process table, the detectors and their glue, over the output.
fn build_pipeline(
    args: &Args,
    plan: Plan,
    kernel: &Kernel,
) -> Result<(Pipeline<ThreadedStdout>, OutputFile)> {
    let mut table = ProcessTable::new(plan.hierarchies.clone(), default_proc_root());
    table.seed();
    if plan.kernel_scope.filter {
        // No event of theirs will come: an entry left would go stale, and
        // its pid could later name another process moving in.
        table.forget_if(|p| !plan.scope.contains(Some(p)));
    }
    let (out, file) = open_output(args)?;
    let mut settings = settings(args, &plan, plan.policies.clone());
    // As attached: a kernel that passed the checks may still refuse the
    // program, and then the actions fall back as they would without it.
    settings.refusal_available = kernel.refusal.available;
    let crashloops = CrashLoopDetector::new(
        // Off: a count never met (the detector is also switched off).
        args.crashloop_rules().unwrap_or(CrashLoopRules {
            count: u32::MAX,
            window_ns: 1_000_000_000,
            max_lifetime_ns: 0,
            ..CrashLoopRules::default()
        }),
        Ignore::for_detector(&plan.ignore_rules, Detector::Crashloop),
    );
    let shared: Arc<dyn System + Send + Sync> = kernel.system.clone();
    let mut pipe = Pipeline::new(
        settings,
        plan.scope.clone(),
        kernel.protection.clone(),
        table,
        Detectors {
            fork: ForkDetector::new(plan.rules),
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
    // Detectors that are plugins: a new one is one line here.
    .with_plugins(vec![
        Box::new(LeakWatch::new(LeakDetector::new(args.leak_rules()))),
        Box::new(CrashLoopWatch::new(crashloops)),
    ]);
    pipe.exempted(
        &kernel.exempt_cgroups.judged,
        &kernel.exempt_cgroups.listed,
        &kernel.exempt_cgroups.protected,
    );
    pipe.seed_detector(WallClock::boot_ns_now());
    let mut pipe = pipe.with_loss_counter(source::loss_counter(
        kernel.drops.clone(),
        kernel.stats.clone(),
    ));
    if !args.incident_dir.as_os_str().is_empty() {
        // The default place missing (a read-only root, say) is a warning;
        // a directory given that cannot be used is an error.
        match Reports::start(
            &args.incident_dir,
            args.incident_keep,
            args.incident_keep_mib.saturating_mul(1 << 20),
        ) {
            Ok(writer) => {
                tracing::info!("incident reports in {}", args.incident_dir.display());
                pipe = pipe.with_reports(ReportBook::new(writer, args.incident_alerts));
            }
            Err(err) if args.incident_dir.as_os_str() == crate::output::report::DEFAULT_DIR => {
                tracing::warn!(
                    "{err:#}: running without incident reports (give --incident-dir a \
                     writable directory, or '' to say none)"
                );
            }
            Err(err) => return Err(err),
        }
    }
    Ok((pipe, file))
}

/// `--socket`: serves the stream, or says why not. The default path taken
/// by another agent is a warning (this one runs without it); a path given
/// that cannot be served is an error.
async fn open_stream(args: &Args) -> Result<Option<(Stream, Listening)>> {
    if args.socket.as_os_str().is_empty() {
        return Ok(None);
    }
    let stream = Stream::default();
    match crate::output::stream::serve(&args.socket, stream.clone()).await {
        Ok(listening) => {
            tracing::info!("stream at {} (guard top reads it)", args.socket.display());
            Ok(Some((stream, listening)))
        }
        Err(err) if args.socket.as_os_str() == crate::output::stream::DEFAULT_SOCKET => {
            tracing::warn!("{err:#}: running without the stream");
            Ok(None)
        }
        Err(err) => Err(err),
    }
}

/// The `start` record: what was attached and how guard runs.
fn start_record(
    args: &Args,
    kernel: &Kernel,
    pipe: &Pipeline<ThreadedStdout>,
    hardening: &Hardening,
    fork_action: ActionKind,
) -> record::Start {
    let report = &kernel.report;
    record::Start {
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
        cgroup_hierarchy: pipe
            .table
            .hierarchies()
            .primary()
            .mount
            .display()
            .to_string(),
        scope: pipe
            .scope
            .cgroups
            .iter()
            .map(|(_, d)| d.to_string())
            .collect(),
        processes: pipe.table.len() as u64,
        fork_action,
        mem_action: args.mem_action,
        leak_action: pipe.settings.effective(args.leak_action),
        refusal: kernel.refusal.clone(),
        off: Detector::ALL
            .into_iter()
            .filter(|&d| !args.runs(d))
            .collect(),
        dry_run: args.dry_run,
        memory_locked: hardening.memory_locked,
        rss_bytes: crate::host::procfs::own_usage().rss_bytes,
        oom_score_adj: hardening.oom_score_adj,
    }
}

/// The action thread: one, long-lived, started before it is needed
/// (creating a thread when a bomb is already running costs milliseconds,
/// its stack populated and locked under mlockall, that the bomb does not
/// give). Outcomes come back on `done`.
fn spawn_actor(
    system: Arc<LiveSystem>,
    realtime: bool,
    done: mpsc::UnboundedSender<(ActionRequest, Outcome)>,
) -> Result<(
    std::sync::mpsc::Sender<ActionRequest>,
    std::thread::JoinHandle<()>,
)> {
    let (act_tx, act_rx) = std::sync::mpsc::channel::<ActionRequest>();
    let actor = std::thread::Builder::new()
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
        .context("starting the action thread")?;
    Ok((act_tx, actor))
}

/// The loop's state.
struct Running {
    pipe: Pipeline<ThreadedStdout>,
    kernel: Kernel,
    file: OutputFile,
    output: OutputWatch,
    service: notify::ServiceManager,
    metrics: Option<Arc<Mutex<Metrics>>>,
    reported: KernelDrops,
    reported_queue: u64,
    act_tx: Option<std::sync::mpsc::Sender<ActionRequest>>,
    actor: Option<std::thread::JoinHandle<()>>,
    done_rx: mpsc::UnboundedReceiver<(ActionRequest, Outcome)>,
    realtime: bool,
    raised: bool,
    budget: budget::CpuBudget,
    warned_budget: bool,
    /// When event lines written since the last flush are due out.
    flush_at: Option<tokio::time::Instant>,
    /// Installed before the `start` record, so that a stop request made
    /// as soon as it is read is answered with a summary.
    signals: Signals,
    /// `--socket`: its file (removed at the end) and what the last
    /// snapshot was computed from (events seen, CPU seconds, when).
    _listening: Option<Listening>,
    last_snapshot: (u64, f64, std::time::Instant),
}

/// The signals the loop answers.
struct Signals {
    int: Signal,
    term: Signal,
    hup: Signal,
    /// Lifts every refusal in force.
    usr2: Signal,
}

impl Running {
    /// Announces the start (record, metrics, service manager) and starts
    /// the action thread.
    async fn new(
        args: &Args,
        mut pipe: Pipeline<ThreadedStdout>,
        kernel: Kernel,
        file: OutputFile,
        hardening: Hardening,
    ) -> Result<Self> {
        let signals = Signals {
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            hup: signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
            usr2: signal(SignalKind::user_defined2()).context("installing the SIGUSR2 handler")?,
        };
        let processes = pipe.table.len();
        tracing::info!(
            "ready: {} probes attached, {processes} processes known, cgroup paths from {}",
            kernel.report.attached.len(),
            pipe.table.hierarchies().primary().mount.display()
        );
        let fork_action = if args.runs(Detector::Fork) {
            pipe.settings.strongest_fork_action()
        } else {
            ActionKind::Log
        };
        let listening = match open_stream(args).await? {
            Some((stream, listening)) => {
                pipe.out.set_stream(stream);
                Some(listening)
            }
            None => None,
        };
        let start = start_record(args, &kernel, &pipe, &hardening, fork_action);
        pipe.out.record(&start).and_then(|()| pipe.out.flush())?;
        let metrics = match args.metrics {
            Some(addr) => {
                let shared = Arc::new(Mutex::new(Metrics::new(&pipe.settings.countable())));
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
            kernel.report.attached.len()
        ));
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let realtime = !args.no_realtime;
        let (act_tx, actor) = spawn_actor(kernel.system.clone(), realtime, done_tx)?;
        Ok(Self {
            pipe,
            kernel,
            file,
            output: OutputWatch {
                enforcing: enforcing(args),
                warned: false,
            },
            service,
            metrics,
            reported: KernelDrops::default(),
            reported_queue: 0,
            act_tx: Some(act_tx),
            actor: Some(actor),
            done_rx,
            realtime,
            raised: false,
            budget: budget::CpuBudget::new(f64::from(args.cpu_limit) / 100.0, 1_000_000_000),
            warned_budget: false,
            flush_at: None,
            signals,
            _listening: listening,
            last_snapshot: (0, 0.0, std::time::Instant::now()),
        })
    }

    /// Hands `requests` to the action thread, then starts the incident
    /// reports of the first actions (after: a report never delays them).
    fn run_actions(&mut self, requests: Vec<ActionRequest>) {
        let first: Vec<ActionRequest> = if self.pipe.reports_on() {
            requests
                .iter()
                .filter(|r| r.follow_ups == 0)
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        if let Some(tx) = &self.act_tx {
            for request in requests {
                let _ = tx.send(request);
            }
        }
        if !first.is_empty() {
            self.pipe.report_requested(&first, WallClock::boot_ns_now());
        }
    }

    /// Until a signal, or stdout's reader goes away.
    async fn run_loop(&mut self, args: &Args) -> Result<Stop> {
        // Pinged from this loop only: if the loop is stuck, the pings stop.
        let mut watchdog =
            tokio::time::interval(self.service.ping_every.unwrap_or(Duration::from_secs(3600)));
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        // An upgraded service manager is a new inode: look again now and then.
        let mut rescan = tokio::time::interval(TRUSTED_RESCAN);
        rescan.tick().await;
        let mut sample = tokio::time::interval(SAMPLE_INTERVAL);
        let mut broken = self.output.ended(&self.pipe.out)?;
        while !broken {
            broken = self.output.ended(&self.pipe.out)?;
            let flush_at = self.flush_at;
            let signals = &mut self.signals;
            tokio::select! {
                _ = tokio::time::sleep_until(flush_at.unwrap_or_else(tokio::time::Instant::now)), if flush_at.is_some() => {
                    self.flush_at = None;
                    self.pipe.out.flush()?;
                }
                _ = signals.int.recv() => return Ok(Stop::Signal),
                _ = signals.term.recv() => return Ok(Stop::Signal),
                _ = signals.hup.recv() => self.on_sighup(args),
                _ = signals.usr2.recv() => {
                    let lifted = self.pipe.end_refusals(WallClock::boot_ns_now(), Ended::Lifted)?;
                    tracing::info!("SIGUSR2: {lifted} refusals lifted");
                }
                _ = watchdog.tick(), if self.service.ping_every.is_some() => self.service.alive(),
                _ = rescan.tick() => self.kernel.system.refresh_trusted(),
                _ = tick.tick() => self.on_tick()?,
                _ = sample.tick() => self.on_sample()?,
                Some((request, outcome)) = self.done_rx.recv() => {
                    let follow_ups = self.pipe.action_done(&request, &outcome, WallClock::boot_ns_now())?;
                    self.run_actions(follow_ups);
                }
                batch = self.kernel.rx.recv() => {
                    let Some(batch) = batch else { return Ok(Stop::ReaderGone) };
                    self.on_batch(batch, args).await?;
                }
            }
        }
        Ok(Stop::Broken)
    }

    fn on_sighup(&mut self, args: &Args) {
        if let Some(flag) = &self.file.reopen {
            flag.store(true, Ordering::Relaxed);
            tracing::info!("SIGHUP: opening the output file again at its next write");
        }
        if let Some((path, running)) = &args.config_file {
            reload_config(path, running, args.insecure_config, &mut self.pipe);
        }
        self.kernel.system.refresh_trusted();
    }

    /// Every second: losses, metrics, the table's sweep, released
    /// condemnations.
    fn on_tick(&mut self) -> Result<()> {
        let k = &self.kernel;
        report_losses(
            &k.drops,
            &k.stats,
            &mut self.reported,
            &mut self.reported_queue,
            &mut self.pipe,
        )?;
        if let Some(metrics) = &self.metrics {
            let snapshot =
                metrics_snapshot(&k.drops, &k.stats, &self.pipe, k.report.attached.len());
            if let Ok(mut m) = metrics.lock() {
                m.update(&snapshot);
            }
        }
        self.pipe.sweep_if_caught_up(WallClock::boot_ns_now());
        let steps = self.pipe.watch_refusals(WallClock::boot_ns_now())?;
        self.run_actions(steps);
        for tag in self.kernel.system.settle() {
            tracing::info!("subtree {tag}: every member verified gone; condemnation released");
        }
        self.publish_snapshot();
        Ok(())
    }

    /// Every second, when a `--socket` client listens: the `snapshot`.
    fn publish_snapshot(&mut self) {
        if !self.pipe.out.stream().is_some_and(|s| s.listening()) {
            return;
        }
        let k = &self.kernel;
        let seen: u64 = self.pipe.seen_by_kind().values().sum();
        let own = crate::host::procfs::own_usage();
        let (seen_before, cpu_before, at) = self.last_snapshot;
        let secs = at.elapsed().as_secs_f64().max(1e-3);
        self.last_snapshot = (seen, own.cpu_seconds, std::time::Instant::now());
        let drops = KernelDrops::read(&k.drops).unwrap_or_default();
        let agent = record::AgentState {
            events_per_sec: seen.saturating_sub(seen_before) as f64 / secs,
            lost: drops.total() + k.stats.queue_full.load(Ordering::Relaxed),
            cpu_percent: (own.cpu_seconds - cpu_before).max(0.0) / secs * 100.0,
            rss_bytes: own.rss_bytes,
            probes: k.report.attached.len(),
            incidents_open: self.pipe.incidents_open(),
            clients: self.pipe.out.stream().map_or(0, |s| s.clients()),
        };
        let snapshot = self.pipe.snapshot(WallClock::boot_ns_now(), agent);
        self.pipe.out.publish(&snapshot);
    }

    /// Every [`SAMPLE_INTERVAL`]: the readings the rules need, and a check.
    fn on_sample(&mut self) -> Result<()> {
        follow_scope(&mut self.kernel.scope_watch, &self.kernel.system);
        self.pipe.sample_pids(WallClock::boot_ns_now());
        self.pipe.sample_memory(WallClock::boot_ns_now());
        let blocked_now = self.kernel.blocked_maps.snapshot();
        let book = self
            .pipe
            .sample_blocked(WallClock::boot_ns_now(), &blocked_now)?;
        self.kernel.blocked_maps.apply(&book);
        let requests = self.pipe.check(WallClock::boot_ns_now())?;
        self.run_actions(requests);
        Ok(())
    }

    /// A batch of events and whatever else is queued (for at most
    /// [`BATCH_TIME`]: a backlog must not keep signals waiting), then one
    /// check, the priority and the CPU budget.
    async fn on_batch(&mut self, mut batch: Vec<Event>, args: &Args) -> Result<()> {
        let mut moved = false;
        let began = std::time::Instant::now();
        loop {
            for event in &batch {
                moved |= matches!(event, Event::CgroupAttach(_));
                self.pipe.handle(event)?;
            }
            if began.elapsed() >= BATCH_TIME {
                break;
            }
            match self.kernel.rx.try_recv() {
                Some(next) => batch = next,
                None => break,
            }
        }
        if moved {
            // A restarted service's process moving into its new cgroup: the
            // probe's scope follows before it forks.
            follow_scope(&mut self.kernel.scope_watch, &self.kernel.system);
        }
        let requests = self.pipe.check(WallClock::boot_ns_now())?;
        self.run_actions(requests);
        if self.pipe.out.unflushed() && self.flush_at.is_none() {
            self.flush_at = Some(tokio::time::Instant::now() + FLUSH_DELAY);
        }
        let busy = self.pipe.detectors.fork.armed() || self.pipe.acting();
        let want = self.realtime && busy;
        if want != self.raised && set_realtime(want) {
            self.raised = want;
            tracing::debug!("SCHED_FIFO {}", if want { "on" } else { "off" });
        }
        let spend = self
            .budget
            .observe(WallClock::boot_ns_now(), budget::process_cpu_ns());
        let spend = if busy { budget::Spend::Normal } else { spend };
        self.pipe.out.set_shedding(spend != budget::Spend::Normal);
        if spend != budget::Spend::Normal && !self.warned_budget {
            self.warned_budget = true;
            tracing::warn!(
                "guard is over --cpu-limit ({}% of a CPU): event lines are shed (counted as \
                 output_shed), detection goes on",
                args.cpu_limit
            );
        }
        if let budget::Spend::Pause(pause) = spend {
            tokio::time::sleep(pause).await;
        }
        Ok(())
    }

    /// Lets a running action finish and report (its follow-ups are not
    /// started), detaches every probe, handles what the reader still holds
    /// for at most [`EXIT_DRAIN`], and writes the summary.
    async fn finish(mut self, stop: Stop) -> Result<Ending> {
        self.service.stopping();
        drop(self.act_tx.take());
        if let Some(actor) = self.actor.take() {
            let _ = actor.join();
        }
        while let Ok((request, outcome)) = self.done_rx.try_recv() {
            self.pipe
                .action_done(&request, &outcome, WallClock::boot_ns_now())?;
        }
        // The maps go with the agent, and the refusals with them.
        self.pipe
            .end_refusals(WallClock::boot_ns_now(), Ended::AgentStopped)?;
        // Every incident still open ends with the agent.
        self.pipe.close_incidents(WallClock::boot_ns_now())?;
        self.pipe.close_reports();
        let Kernel {
            loaded,
            stop_reader,
            reader,
            mut rx,
            drops,
            stats,
            ..
        } = self.kernel;
        drop(loaded);
        let _ = stop_reader.send(());
        // The rest is counted.
        let drain_until = tokio::time::Instant::now() + EXIT_DRAIN;
        let mut unread = 0u64;
        loop {
            match tokio::time::timeout_at(drain_until, rx.recv()).await {
                Ok(Some(batch)) => {
                    for event in &batch {
                        self.pipe.handle(event)?;
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
        if stop == Stop::Broken {
            return Ok(Ending::BrokenPipe);
        }
        let summary = summary(&self.pipe, &drops, &stats, &self.file, unread)?;
        let pipe = &mut self.pipe;
        pipe.out.record(&summary).and_then(|()| pipe.out.flush())?;
        if pipe.out.dropped + pipe.out.records_dropped > 0 {
            tracing::warn!(
                "{} event lines and {} other records were not written: stdout was not read fast \
                 enough, or had failed",
                pipe.out.dropped,
                pipe.out.records_dropped
            );
        }
        if self.output.ended(&self.pipe.out)? {
            return Ok(Ending::BrokenPipe);
        }
        Ok(if stop == Stop::Signal {
            Ending::Signal
        } else {
            Ending::BrokenPipe
        })
    }
}

/// The `summary` record: what guard saw, lost, shed and used.
fn summary(
    pipe: &Pipeline<ThreadedStdout>,
    drops: &aya::maps::PerCpuArray<aya::maps::MapData, u64>,
    stats: &SourceStats,
    file: &OutputFile,
    unread: u64,
) -> Result<record::Summary> {
    let kernel = KernelDrops::read(drops)?;
    let queue_full = stats.queue_full.load(Ordering::Relaxed);
    let own = crate::host::procfs::own_usage();
    Ok(record::Summary {
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
        output_write_failed: file
            .failed_lines
            .as_ref()
            .map_or(0, |n| n.load(Ordering::Relaxed)),
        records_dropped: pipe.out.records_dropped,
        output_shed: pipe.out.shed,
        hooks: pipe.out.hook_counts().map(|c| record::HookTally {
            run: c.run.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            skipped: c.skipped.load(Ordering::Relaxed),
            stale: c.stale.load(Ordering::Relaxed),
        }),
        unread_at_exit: unread,
    })
}
