//! The command line: flags, their ranges and defaults, and the
//! subcommands' own modules.
//!
//! - `config`: the TOML config file: flags by their names, and policies.
//! - `check`: `guard check`, the host's facts and what they turn on or off.
//! - `man`: `guard man`, the man page.

pub mod check;
pub mod config;
pub mod man;

use std::{collections::BTreeSet, path::PathBuf};

use clap::{Parser, ValueEnum};
use guard_common::{EventKind, fork_rule};

use crate::respond::policy::ActionKind;

#[derive(Debug, Parser)]
#[command(
    name = "guard",
    version,
    about = "Kernel-level process tracer and fork/memory guard (eBPF).",
    long_about = "Kernel-level process tracer and fork/memory guard (eBPF).\n\n\
        guard loads eBPF programs on kernel tracepoints (process fork, exec and exit, cgroup moves, \
        OOM kills, hung tasks) and streams one line per event to stdout until it gets SIGINT or \
        SIGTERM; then it detaches and prints a summary (events seen per kind, events lost). \
        Diagnostics go to stderr. It needs root (CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN) and a \
        kernel with BTF (/sys/kernel/btf/vmlinux).",
    after_help = "Examples:\n  \
        sudo guard                                   # everything, readable columns\n  \
        sudo guard --json --events fork,exit         # NDJSON, two kinds\n  \
        sudo guard --cgroup /sys/fs/cgroup/pids/ci   # only processes in that cgroup and below"
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Read flags from this TOML file (default /etc/guard/guard.toml, when
    /// it exists): its keys are the flags' names without `--`, and
    /// `[[policy]]` tables set actions per cgroup. A flag on the command
    /// line wins over the file. SIGHUP reads it again (its policies apply at
    /// once; a bad file keeps the old configuration and says why).
    /// `guard config` prints the result. See packaging/guard.toml.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Read a config file, and run an --on-alert program, that is not owned
    /// by root or that others can write (or whose directory they can):
    /// refused without this, as sshd's StrictModes refuses such files,
    /// since guard runs hooks as root and kills what its policies say.
    /// Says so loudly. Command line only.
    #[arg(long, global = true)]
    pub insecure_config: bool,

    /// The config file's `[[policy]]` tables.
    #[arg(skip)]
    pub policies: Vec<crate::respond::policy::CgroupPolicy>,

    /// The config file read, and the flags it gave (SIGHUP reads it again).
    #[arg(skip)]
    pub config_file: Option<(PathBuf, std::collections::BTreeMap<String, String>)>,

    /// Write NDJSON (one JSON object per line) instead of aligned columns.
    /// Every object has `kind`, `time` (RFC 3339 UTC with nanoseconds) and
    /// `boot_ns` (nanoseconds since boot, CLOCK_BOOTTIME); see the README for
    /// the fields of each kind.
    #[arg(help_heading = "Output", long)]
    pub json: bool,

    /// Event kinds to show, comma-separated: fork, exec, exit, oom_kill,
    /// hung_task, cgroup_attach, unblocked, rss, reclaim_stall, condemned, `all`, or
    /// `none` (alerts only: detector records, no event line; every probe
    /// the detectors use stays attached). Probes for kinds not
    /// shown are not attached, except fork, exec, exit and cgroup_attach,
    /// which keep the process table current, and sched_switch (unblocked),
    /// which tracks blocked tasks, and rss, which feeds the memory rule.
    /// Detector records (`blocked`, `alert`,
    /// `action`) are always shown.
    #[arg(help_heading = "Output", long, value_name = "KINDS", default_value = "all", value_parser = KindsParser)]
    pub events: KindSet,

    /// Also show thread-level events: threads created (fork with
    /// `thread: true`) and threads ending while their process lives on.
    #[arg(help_heading = "Output", long)]
    pub threads: bool,

    /// Show only processes in this cgroup or below it (repeatable: any of
    /// them). PATH is a cgroup directory in any hierarchy: a v2 path such as
    /// /sys/fs/cgroup/system.slice/foo.service, or a v1 controller path such
    /// as /sys/fs/cgroup/pids/foo. The first PATH's hierarchy is also the one
    /// whose paths events show in their `cgroup` field (otherwise: v2 on a
    /// pure v2 host, else v1 pids, else v1 memory).
    #[arg(help_heading = "Scope and protection", long, value_name = "PATH")]
    pub cgroup: Vec<PathBuf>,

    /// Serve Prometheus metrics at http://ADDR/metrics (e.g.
    /// 127.0.0.1:9750, or 0.0.0.0:9750 for a scraper elsewhere): events and
    /// losses by kind, alerts and actions by detector, pids and memory of
    /// each watched cgroup with the projected seconds to its limit, blocked
    /// tasks, guard's own CPU and memory. Updated every second.
    #[arg(help_heading = "Output", long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,

    /// Serve the agent's records, and a snapshot of what it sees every
    /// second, as NDJSON on this unix socket (0600, root only): `guard top`
    /// and other tools read it. A client that falls behind is dropped.
    /// An empty value turns it off.
    #[arg(
        help_heading = "Output",
        long,
        value_name = "PATH",
        default_value = crate::output::stream::DEFAULT_SOCKET,
        value_parser = path_or_empty()
    )]
    pub socket: PathBuf,

    /// Write an incident report for every action here (files 0600 in a
    /// directory only root may write): the decision and its figures, the
    /// offender's subtree as captured before it was signalled, the
    /// lineage's and cgroup's last records and readings, and the outcome.
    /// `guard incidents` lists them, `guard incident ID` shows one. An
    /// empty value turns them off.
    #[arg(
        help_heading = "Output",
        long,
        value_name = "DIR",
        default_value = crate::output::report::DEFAULT_DIR,
        value_parser = path_or_empty()
    )]
    pub incident_dir: PathBuf,

    /// Keep at most this many incident reports (the oldest go first).
    #[arg(help_heading = "Output", long, value_name = "N", default_value_t = crate::output::report::DEFAULT_KEEP)]
    pub incident_keep: usize,

    /// Keep at most this many MiB of incident reports (the oldest go first).
    #[arg(help_heading = "Output", long, value_name = "MIB", default_value_t = crate::output::report::DEFAULT_KEEP_MIB)]
    pub incident_keep_mib: u64,

    /// Write an incident report for every alert too, not only for actions
    /// (an alert under `log` gets its report when it is raised).
    #[arg(help_heading = "Output", long)]
    pub incident_alerts: bool,

    /// The host name every JSON record, event and hook carries (`host`,
    /// GUARD_HOST). Default: the kernel's (/proc/sys/kernel/hostname). In a
    /// DaemonSet, give the node's name (the example passes spec.nodeName).
    #[arg(help_heading = "Output", long, value_name = "NAME", value_parser = host_name)]
    pub hostname: Option<String>,

    /// Where kubelet keeps pods' logs, one directory per pod named
    /// NAMESPACE_NAME_UID: records of a process in a pod name its
    /// namespace and pod (beside the UID, QoS class and container its cgroup
    /// gives), and `namespace` policies match by it. Believed only if root
    /// owns it and nobody else can write it. An empty value turns it off.
    #[arg(
        help_heading = "Output",
        long,
        value_name = "DIR",
        default_value = crate::host::kube::POD_LOGS,
        value_parser = path_or_empty()
    )]
    pub pod_logs: PathBuf,

    /// Run this shell command (`sh -c CMD`) for every alert, action and
    /// `resolved` record: the record as one JSON line on stdin, its main
    /// fields in GUARD_KIND, GUARD_HOST, GUARD_INCIDENT, GUARD_SEVERITY,
    /// GUARD_DETECTOR, GUARD_RULE, GUARD_ACTION, GUARD_PID, GUARD_COMM,
    /// GUARD_CGROUP (and for a crash loop GUARD_SUPERVISOR_PID: PID and
    /// COMM are its crashing program's). One at a time, killed after 10 s,
    /// at most 5 in a row and then one per 6 s; it never holds detection
    /// up, and a failing command is reported, not fatal.
    #[arg(help_heading = "Output", long, value_name = "CMD")]
    pub on_alert: Option<String>,

    /// Run this program for every alert, action and `resolved` record, as
    /// --on-alert does but with no shell: the first value is the program's absolute path, the
    /// next ones its arguments, each given as it is (repeat the flag, or in
    /// the config file give an array: on-alert-exec = ["/usr/bin/curl",
    /// "-sf", "--data-binary", "@-", "https://hooks.example/guard"]). For
    /// images without /bin/sh. The program must be root's and writable by
    /// no one else.
    #[arg(
        help_heading = "Output",
        long,
        value_name = "ARG",
        allow_hyphen_values = true,
        conflicts_with = "on_alert"
    )]
    pub on_alert_exec: Vec<String>,

    /// Write records to FILE (appended, created if missing) instead of
    /// stdout. SIGHUP opens it again at the same path, for logrotate.
    #[arg(help_heading = "Output", long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// When to colour the text output (`auto`: when stdout is a terminal and
    /// NO_COLOR is not set).
    #[arg(help_heading = "Output", long, value_enum, default_value_t = Color::Auto)]
    pub color: Color,

    /// Size of the kernel ring buffer in MiB (a power of two). A larger one
    /// rides out longer bursts before events are lost (losses are always
    /// counted and reported).
    #[arg(help_heading = "The agent itself", long, value_name = "MIB", default_value_t = guard_common::DEFAULT_RING_BYTES >> 20, value_parser = parse_ring_mib)]
    pub ring_buffer_mib: u32,

    /// Events the reader may queue ahead of the pipeline before it counts
    /// further ones as lost (1 to 1048576; each takes about 200 bytes when
    /// the queue is full).
    #[arg(help_heading = "The agent itself", long, value_name = "EVENTS", default_value_t = 65536, value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    pub queue: u32,

    /// Kernel BTF to resolve struct offsets from.
    #[arg(
        help_heading = "The agent itself",
        long,
        global = true,
        value_name = "PATH",
        default_value = "/sys/kernel/btf/vmlinux"
    )]
    pub btf: PathBuf,

    /// What a fork alert leads to: `log` (alert only); `refuse` (every
    /// fork and clone of the offending subtree fails with EAGAIN in the
    /// kernel, nobody is signalled, the rest of its cgroup forks as
    /// before); `refuse-then-stop` or `refuse-then-kill` (refuse, and if the
    /// subtree keeps trying past --refuse-grace, stop or kill it); `stop`
    /// (freeze the subtree with SIGSTOP) or `kill` (SIGKILL every member).
    /// `stop` and `kill` refuse the subtree's forks from the verdict on, so
    /// it never grows past its size then. Refusing needs the BPF LSM (see
    /// `guard check`); without it `refuse` only alerts, a ladder starts at
    /// its second rung, and a member that forks is signalled by the kernel
    /// probe instead. Protected processes are never signalled nor refused.
    #[arg(help_heading = "Fork guard", long, value_enum, default_value_t = ActionKind::Log)]
    pub fork_action: ActionKind,

    /// Explosion rule: births per second (averaged over --fork-window-ms) a
    /// cgroup must sustain (10 to 100000: slower growth is the trend
    /// rule's)...
    #[arg(help_heading = "Fork guard", long, value_name = "PER_SEC", default_value_t = fork_rule::DEFAULT_RATE, value_parser = number_in(10.0, 100_000.0, "births per second"))]
    pub fork_rate: f64,

    /// ...while its live process count grows by at least this much from its
    /// lowest point in the window. Short-lived bursts (a build, a test
    /// runner) do not grow it; a worker pool starting once has too few
    /// births (8 to 100000).
    #[arg(help_heading = "Fork guard", long, value_name = "PROCESSES", default_value_t = fork_rule::DEFAULT_GROWTH, value_parser = clap::value_parser!(u32).range(8..=100_000))]
    pub fork_growth: u32,

    /// ...half of them self-copies, this many generations deep in copies
    /// of one program, each forked by the one before with no exec into
    /// another program between them, or threads started by threads (2 to
    /// 64). A bomb replicates
    /// itself; a wide build (make -j, xargs -P, cargo, a test runner's
    /// workers) forks children that exec compilers and tools, 1 deep.
    #[arg(help_heading = "Fork guard", long, value_name = "GENERATIONS", default_value_t = fork_rule::DEFAULT_DEPTH, value_parser = clap::value_parser!(u32).range(2..=64))]
    pub fork_depth: u32,

    /// The explosion rule's sliding window (10 to 60000).
    #[arg(help_heading = "Fork guard", long, value_name = "MS", default_value_t = fork_rule::DEFAULT_WINDOW_MS, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub fork_window_ms: u64,

    /// Trend rule: alert when a cgroup's pids.current, at its growth rate
    /// over the last 20 s, would reach pids.max within this many seconds
    /// (cgroups without a limit count toward the host's pid_max); 1 to 3600.
    #[arg(help_heading = "Fork guard", long, value_name = "SECS", default_value_t = fork_rule::DEFAULT_HORIZON_SECS, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub pids_horizon: u64,

    /// Crash-loop rule: alert when the same command (program and
    /// arguments), in the same cgroup, restarted by the same parent with
    /// nothing else run between, crashes this many times within this many
    /// seconds (2 to 10000 crashes within 1 to 86400 seconds), or `off`. A
    /// crash is a quick non-zero exit, a fault signal (SIGSEGV, SIGABRT,
    /// SIGBUS, SIGILL, SIGFPE, SIGSYS, SIGTRAP) or the OOM killer; a kill by
    /// anyone else is none. A command a script runs between other programs
    /// (`ls`, `stat`, `until probe; do sleep 1; done`) is no restart, and a
    /// success ends a loop.
    #[arg(help_heading = "Crash loops", long, value_name = "N/SECS|off", default_value_t = crate::detect::crashloop::CrashLoopSetting::DEFAULT, value_parser = crate::detect::crashloop::parse_setting)]
    pub crashloop: crate::detect::crashloop::CrashLoopSetting,

    /// Never count exits of a program whose path matches REGEX
    /// (repeatable): `--ignore crashloop:program=REGEX`.
    #[arg(help_heading = "Crash loops", long, value_name = "REGEX", value_parser = crate::detect::switches::program_regex)]
    pub crashloop_ignore: Vec<regex::Regex>,

    /// What a crash-loop alert leads to: `log`, or `stop`: SIGSTOP the
    /// supervisor that keeps restarting the program (resume it with
    /// SIGCONT), only once the loop is sustained (--crashloop-stop-after)
    /// and only when it is not PID 1, not a service manager (systemd,
    /// supervisord, runsv, container shims...), not protected and inside
    /// --cgroup; otherwise the alert says why it was not stopped.
    #[arg(help_heading = "Crash loops", long, value_enum, default_value_t = CrashLoopAction::Log)]
    pub crashloop_action: CrashLoopAction,

    /// A process that lived longer than this before failing did not crash on
    /// start and does not count toward a crash loop (1 to 3600).
    #[arg(help_heading = "Crash loops", long, value_name = "SECS", default_value_t = crate::detect::crashloop::DEFAULT_LIFETIME_SECS, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub crashloop_lifetime: u64,

    /// A crash loop is sustained, and only then may be stopped, after this
    /// many crashes over at least this many seconds without a break (no
    /// success, no quiet window), the program running at least half that
    /// time: a boot-time wait is over by then, and a retry paced by sleeps
    /// never qualifies (2 to 1000000 crashes over 0 to 86400 seconds).
    #[arg(help_heading = "Crash loops", long, value_name = "N/SECS", default_value_t = crate::detect::crashloop::SustainedSetting::DEFAULT, value_parser = crate::detect::crashloop::parse_sustained)]
    pub crashloop_stop_after: crate::detect::crashloop::SustainedSetting,

    /// Leak rule: alert when a cgroup's task count (pids.current) keeps
    /// rising with no plateau, the lowest count of each sixth of a window
    /// above the one before and still rising at its end: over 3 minutes,
    /// or over windows doubling from there up to this many seconds for
    /// slower growth (10 to 86400; below 180 the only window)...
    #[arg(help_heading = "Leaks", long, value_name = "SECS", default_value_t = crate::detect::leak::DEFAULT_WINDOW_SECS, value_parser = clap::value_parser!(u64).range(10..=86_400))]
    pub leak_window: u64,

    /// ...by at least this many tasks (2 to 100000).
    #[arg(help_heading = "Leaks", long, value_name = "TASKS", default_value_t = crate::detect::leak::DEFAULT_GROWTH, value_parser = clap::value_parser!(u32).range(2..=100_000))]
    pub leak_growth: u32,

    /// What a leak alert leads to: `log` (the default: a slow leak leaves
    /// time to decide); `refuse` the leaking subtree's forks (it keeps
    /// running with the processes it has), `refuse-then-stop` or
    /// `refuse-then-kill`; `stop` or `kill` it. The subtree is the topmost
    /// unprotected ancestor of the recent births, with what it started.
    #[arg(help_heading = "Leaks", long, value_enum, default_value_t = ActionKind::Log)]
    pub leak_action: ActionKind,

    /// What a memory alert leads to: `log` (alert only), `stop` (SIGSTOP
    /// the offender) or `kill` (SIGKILL it; a child it forks meanwhile dies
    /// at birth). Protected processes are never signalled. (Refusing forks
    /// frees no memory: not an action here.)
    #[arg(help_heading = "Memory guard", long, default_value = "log", value_parser = signal_action)]
    pub mem_action: ActionKind,

    /// Memory guard: when a pool runs out, take a growing process whose
    /// program path matches REGEX first (repeatable), with its subtree,
    /// before the subtree that grew most (earlyoom's --prefer).
    #[arg(help_heading = "Memory guard", long, value_name = "REGEX", value_parser = crate::detect::switches::program_regex)]
    pub prefer: Vec<regex::Regex>,

    /// Memory rule: alert when a memory cgroup's (or the host's) usage that
    /// reclaim cannot take back (anon + shmem; page cache does not count),
    /// growing steadily, would reach its limit within this many seconds
    /// (0.5 to 3600).
    #[arg(help_heading = "Memory guard", long, value_name = "SECS", default_value_t = 10.0, value_parser = number_in(0.5, 3600.0, "seconds"))]
    pub mem_horizon: f64,

    /// ...or passes this percentage of the limit while growing (the fast
    /// path for a runaway too quick for the horizon); 1 to 100.
    #[arg(help_heading = "Memory guard", long, value_name = "PERCENT", default_value_t = 80.0, value_parser = parse_percent)]
    pub mem_headroom: f64,

    /// An `rss` record each time a process's anonymous + shmem memory
    /// (what reclaim cannot drop without swap) crosses a multiple of this
    /// many MiB: the memory rule's view of each process; 1 to 65536.
    #[arg(help_heading = "Memory guard", long, value_name = "MIB", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub rss_step_mib: u64,

    /// A `reclaim_stall` record for every direct or memory-cgroup reclaim
    /// that stalls a task this long or longer (1 to 60000).
    #[arg(help_heading = "Memory guard", long, value_name = "MS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=60_000))]
    pub reclaim_stall_ms: u32,

    /// Blocked-task rule: report every task in uninterruptible sleep (D
    /// state) for this long or longer, with where it waits (at least 1).
    /// Idle kernel threads (TASK_IDLE) never count; killable waits
    /// (TASK_KILLABLE, e.g. vfork parents) are reported, marked killable.
    /// 1 to 86400.
    #[arg(help_heading = "Blocked tasks", long, value_name = "SECS", default_value_t = 5.0, value_parser = parse_blocked_threshold)]
    pub blocked_threshold: f64,

    /// Alert on a storm: this many tasks (uninterruptible, not killable)
    /// blocked past --blocked-threshold at once (1 to 100000). Alerts only:
    /// a task in D state cannot be killed.
    #[arg(help_heading = "Blocked tasks", long, value_name = "TASKS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub blocked_storm: u32,

    /// Never signal this: a pid; an existing cgroup directory (and
    /// everything below it); a program, by the absolute path of its
    /// executable or by a name found in root's directories (/usr/bin,
    /// /usr/sbin...), whose file must be root's and writable by no one else.
    /// Programs are known by their executable's inode, never by comm: a
    /// symlink named postgres is not postgres. Repeatable. PID 1, kernel
    /// threads, guard and its ancestors, service managers and session
    /// daemons (systemd, sshd, supervisord, runsv, container shims,
    /// dockerd..., by their executables likewise), and everything outside
    /// --cgroup are always protected: an explosion under one of them is
    /// pinned on the child that started it.
    #[arg(help_heading = "Scope and protection", long, value_name = "PID|CGROUP|PROGRAM", value_parser = crate::respond::protect::parse_protected)]
    pub protect: Vec<crate::respond::protect::Protected>,

    /// Print the actions guard would take (as `action` records with
    /// `dry_run: true`) without signalling anything.
    #[arg(help_heading = "Scope and protection", long)]
    pub dry_run: bool,

    /// Keep normal scheduling throughout. By default guard switches itself
    /// to SCHED_FIFO (lowest real-time priority) while a cgroup is a quarter
    /// of the way to the explosion rule or an action runs, so that a fork
    /// bomb's hundreds of runnable processes cannot starve it, and back to
    /// normal when quiet. It always locks its memory and sets its
    /// oom_score_adj to -1000.
    #[arg(help_heading = "The agent itself", long)]
    pub no_realtime: bool,

    /// A ladder (`refuse-then-stop`, `refuse-then-kill`) takes its next
    /// step when the refused subtree still tried to fork in the last
    /// quarter of this many seconds after the refusal began (1 to 3600). A
    /// subtree that gave up stays refused.
    #[arg(help_heading = "Refusal", long, value_name = "SECS", default_value_t = crate::respond::refusal::DEFAULT_GRACE_SECS, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub refuse_grace: u64,

    /// A refusal is lifted after this many seconds (0: only when its
    /// subtree is gone, or on SIGUSR2, which lifts every refusal now). A
    /// lifted subtree that grows again is judged again.
    #[arg(help_heading = "Refusal", long, value_name = "SECS", default_value_t = crate::respond::refusal::DEFAULT_LIMIT_SECS, value_parser = clap::value_parser!(u64).range(0..=604_800))]
    pub refuse_for: u64,

    /// Do not attach the BPF LSM program that refuses forks: `refuse` then
    /// only alerts, a ladder starts at its second rung, and `stop` and
    /// `kill` signal without refusing first (as on a kernel without the
    /// BPF LSM).
    #[arg(help_heading = "Refusal", long)]
    pub no_lsm: bool,

    /// Most of one CPU guard's pipeline may use, averaged over a second (1
    /// to 400 percent). Over it, guard stops writing fork, exec and exit
    /// lines (detection goes on; the lines are counted as `output_shed`;
    /// oom_kill, hung_task, unblocked and condemned lines are always
    /// written), and if still over
    /// it a second later, pauses between batches, leaving events in the
    /// ring buffer. Never while it contains a bomb or acts: containment
    /// runs on a thread of its own.
    #[arg(help_heading = "The agent itself", long, value_name = "PERCENT", default_value_t = 25, value_parser = clap::value_parser!(u32).range(1..=400))]
    pub cpu_limit: u32,

    /// Turn detectors off: fork, memory, crashloop, blocked
    /// (comma-separated, or repeated). Events are still streamed.
    #[arg(
        help_heading = "Scope and protection",
        long,
        value_name = "DETECTORS",
        value_enum,
        value_delimiter = ','
    )]
    pub off: Vec<crate::detect::switches::Detector>,

    /// Leave alone what matches, per detector or for all:
    /// `[DETECTOR:]program=REGEX` (a process's program path) or
    /// `[DETECTOR:]cgroup=REGEX` (its cgroup directory). Repeatable. E.g.
    /// `crashloop:program=^/usr/lib/nagios/`, `cgroup=/ci-runner`. For
    /// crashloop its exits do not count; for fork the cgroup is not judged
    /// and the program is never the offender (the kernel's fork probe
    /// leaves it alone too); for memory it is never the offender and a
    /// matching pool raises nothing; for blocked it is not reported.
    #[arg(help_heading = "Scope and protection", long, value_name = "RULE", value_parser = crate::detect::switches::parse_ignore)]
    pub ignore: Vec<crate::detect::switches::IgnoreRule>,

    /// More diagnostics on stderr (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(help_heading = "Output", short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

impl Args {
    /// Pods' names from `--pod-logs` (none when it is empty).
    pub fn pod_names(&self) -> std::sync::Arc<crate::host::kube::PodNames> {
        let dir = (!self.pod_logs.as_os_str().is_empty()).then(|| self.pod_logs.clone());
        std::sync::Arc::new(crate::host::kube::PodNames::new(dir))
    }

    /// The policies of the config file, with pods' names for `namespace`
    /// policies; an error says which policy is wrong.
    pub fn policies(&self) -> Result<crate::respond::policy::Policies, String> {
        crate::respond::policy::Policies::new(self.policies.clone())
            .map(|p| p.with_pods(self.pod_names()))
    }

    /// The fork rules the flags give.
    pub fn fork_rules(&self) -> crate::detect::fork::ForkRules {
        crate::detect::fork::ForkRules {
            window_ns: self.fork_window_ms * 1_000_000,
            rate: self.fork_rate,
            growth: self.fork_growth,
            depth: self.fork_depth,
            horizon_ns: self.pids_horizon * 1_000_000_000,
        }
    }

    /// The crash-loop rules the flags give (`None`: `--crashloop off`).
    pub fn crashloop_rules(&self) -> Option<crate::detect::crashloop::CrashLoopRules> {
        let (count, secs) = self.crashloop.0?;
        Some(crate::detect::crashloop::CrashLoopRules {
            count,
            window_ns: secs * 1_000_000_000,
            max_lifetime_ns: self.crashloop_lifetime * 1_000_000_000,
            sustained_count: self.crashloop_stop_after.0,
            sustained_ns: self.crashloop_stop_after.1 * 1_000_000_000,
        })
    }

    /// The leak rules the flags give.
    pub fn leak_rules(&self) -> crate::detect::leak::LeakRules {
        crate::detect::leak::LeakRules {
            window_ns: self.leak_window * 1_000_000_000,
            growth: self.leak_growth,
        }
    }

    /// Whether `detector` runs (`--off`, `--crashloop off`).
    /// The hook, from `--on-alert` or `--on-alert-exec`.
    pub fn hook(&self) -> Option<crate::respond::hook::HookCommand> {
        crate::respond::hook::HookCommand::from_flags(self.on_alert.as_deref(), &self.on_alert_exec)
    }

    pub fn runs(&self, detector: crate::detect::switches::Detector) -> bool {
        use crate::detect::switches::Detector;
        !self.off.contains(&detector)
            && (detector != Detector::Crashloop || self.crashloop.0.is_some())
    }

    /// Every `--ignore` rule, `--crashloop-ignore` included.
    pub fn ignore_rules(&self) -> Vec<crate::detect::switches::IgnoreRule> {
        use crate::detect::switches::{Detector, Field, IgnoreRule};
        self.ignore
            .iter()
            .cloned()
            .chain(self.crashloop_ignore.iter().map(|regex| IgnoreRule {
                detector: Some(Detector::Crashloop),
                field: Field::Program,
                regex: regex.clone(),
            }))
            .collect()
    }
}

/// `--mem-action`: the actions that signal (refusing forks frees no
/// memory).
fn signal_action(value: &str) -> Result<ActionKind, String> {
    match ActionKind::from_str(value, true) {
        Ok(action) if !action.refuses() => Ok(action),
        Ok(_) => Err(format!(
            "{value}: refusing forks frees no memory; use log, stop or kill"
        )),
        Err(_) => Err(format!("{value}: use log, stop or kill")),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CrashLoopAction {
    Log,
    Stop,
}

impl From<CrashLoopAction> for ActionKind {
    fn from(a: CrashLoopAction) -> Self {
        match a {
            CrashLoopAction::Log => ActionKind::Log,
            CrashLoopAction::Stop => ActionKind::Stop,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Color {
    Auto,
    Always,
    Never,
}

/// What `guard` does other than run.
#[derive(clap::Subcommand, Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Say whether and how guard can run on this host, as a table: the
    /// kernel, BTF, capabilities held, tracefs and each probe, the ring
    /// buffer, bpf_send_signal_task, BPF LSM, the cgroup layout and
    /// controllers, PSI, and what each turns on or off. Loads nothing.
    /// Exits 1 when guard cannot run.
    Check,
    /// Print the effective configuration as TOML: every flag's value (and
    /// whether it was set or is the default) after the config file and the
    /// command line, then the policies, each with the cgroups it matches
    /// now (a warning for one that matches none).
    Config {
        /// Validate instead, as the agent does at start (policies, hooks,
        /// cgroups, protected programs, the kernel's support for the
        /// actions): say what it would do and exit 1 on anything it would
        /// refuse. Loads nothing.
        #[arg(long)]
        check: bool,
    },
    /// A live view of what the agent sees, read from its --socket: cgroups
    /// by time to their limit (tasks, growth, sparkline, who would be
    /// acted on), memory pools, the last alerts and actions, blocked
    /// tasks, the agent's health. Keys: q quit, s sort, / filter, arrows
    /// select, enter process tree, p pause. When no agent listens, top
    /// starts one of its own, log only (--dry-run), with the --cgroup
    /// flags given, and stops it when it ends. Honours NO_COLOR.
    Top {
        /// Only connect to a running agent: fail if none listens.
        #[arg(long)]
        no_agent: bool,
    },
    /// List the incident reports in --incident-dir, oldest first: id,
    /// time, detector and rule, action and how it ended, members, offender.
    Incidents {
        /// One report per line, as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one incident report: the decision and its figures, the
    /// offender's subtree as captured before it was signalled (which
    /// members were signalled), the cgroup's last events and readings, its
    /// files before and after, the actions and how the incident ended.
    Incident {
        /// The incident id (the records' `incident`; `guard incidents`
        /// lists them).
        id: String,
        /// The report as stored (JSON).
        #[arg(long)]
        json: bool,
    },
    /// Write a shell completion script to stdout (`cargo xtask dist` writes
    /// them beside the binary).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man page (roff) to stdout: `guard man | man -l -`. The
    /// Debian package and `cargo xtask install` install it as guard(1).
    Man,
    /// Write the JSON Schema of the records `--json` writes (generated from
    /// their types; the repository keeps it as schema/guard.schema.json).
    Schema {
        /// Write the Markdown field reference instead (docs/schema-fields.md).
        #[arg(long)]
        markdown: bool,
    },
}

/// A set of event kinds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KindSet(pub BTreeSet<EventKind>);

impl KindSet {
    pub fn contains(&self, kind: EventKind) -> bool {
        self.0.contains(&kind)
    }
}

/// Whether colour is wanted where it could be shown: the NO_COLOR
/// convention (no-color.org) turns it off when set and not empty.
/// A host name as records carry it: 1 to 253 printable ASCII characters
/// with no space (a DNS name, a node's name).
fn host_name(text: &str) -> Result<String, String> {
    if text.is_empty() || text.len() > 253 || !text.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "{text:?} is no host name: give 1 to 253 printable ASCII characters without spaces"
        ));
    }
    Ok(text.to_owned())
}

/// A path where an empty value means "none" (clap's path parser refuses
/// empty values).
fn path_or_empty() -> impl clap::builder::TypedValueParser<Value = PathBuf> {
    use clap::builder::TypedValueParser as _;
    clap::builder::OsStringValueParser::new().map(PathBuf::from)
}

pub fn no_color_env() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

/// `--events`' parser: [`parse_kinds`], with the kinds as possible values
/// so that shell completion offers them (not file names).
#[derive(Clone, Copy, Debug)]
struct KindsParser;

impl clap::builder::TypedValueParser for KindsParser {
    type Value = KindSet;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<KindSet, clap::Error> {
        let text = value
            .to_str()
            .ok_or_else(|| clap::Error::new(clap::error::ErrorKind::InvalidUtf8).with_cmd(cmd))?;
        parse_kinds(text).map_err(|why| {
            let name = arg.map_or_else(|| "--events".to_owned(), |a| a.to_string());
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("invalid value '{text}' for '{name}': {why}\n"),
            )
            .with_cmd(cmd)
        })
    }

    fn possible_values(
        &self,
    ) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        Some(Box::new(
            EventKind::ALL
                .into_iter()
                .map(|k| clap::builder::PossibleValue::new(k.name()))
                .chain(["all", "none"].map(clap::builder::PossibleValue::new)),
        ))
    }
}

pub fn parse_kinds(text: &str) -> Result<KindSet, String> {
    if text.trim() == "none" {
        // Alerts only: no event line, every detector record.
        return Ok(KindSet(BTreeSet::new()));
    }
    let mut set = BTreeSet::new();
    for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        if word == "all" {
            set.extend(EventKind::ALL);
            continue;
        }
        let kind = EventKind::ALL
            .into_iter()
            .find(|k| k.name() == word)
            .ok_or_else(|| {
                let names: Vec<&str> = EventKind::ALL.iter().map(|k| k.name()).collect();
                format!(
                    "unknown event kind {word:?}; choose from {}, or all, or none",
                    names.join(", ")
                )
            })?;
        set.insert(kind);
    }
    if set.is_empty() {
        return Err("no event kind given".into());
    }
    Ok(KindSet(set))
}

/// A parser for a finite number from `min` to `max` (NaN, infinities and
/// numbers out of range are refused, naming the range).
fn number_in(
    min: f64,
    max: f64,
    unit: &'static str,
) -> impl Fn(&str) -> Result<f64, String> + Clone + Send + Sync + 'static {
    move |text| {
        let value: f64 = text
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not a number of {unit}"))?;
        if !(min..=max).contains(&value) {
            return Err(format!("{text}: must be {min} to {max} {unit}"));
        }
        Ok(value)
    }
}

fn parse_percent(text: &str) -> Result<f64, String> {
    let pct: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a percentage"))?;
    if !(1.0..=100.0).contains(&pct) {
        return Err(format!("{pct}: a percentage of the limit, 1 to 100"));
    }
    Ok(pct)
}

fn parse_blocked_threshold(text: &str) -> Result<f64, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !(1.0..=86_400.0).contains(&secs) {
        return Err(format!(
            "{secs} s: the blocked threshold must be between 1 and 86400 seconds"
        ));
    }
    Ok(secs)
}

fn parse_ring_mib(text: &str) -> Result<u32, String> {
    let mib: u32 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of MiB"))?;
    if !mib.is_power_of_two() || mib > 1024 {
        return Err(format!(
            "{mib} MiB: the ring buffer size must be a power of two, at most 1024"
        ));
    }
    Ok(mib)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    /// Defaults live once: the flags' defaults are the rules' `Default`s
    /// (which take theirs from `guard_common::fork_rule` and the detectors'
    /// constants; the config file's keys are the flags).
    #[test]
    fn the_flags_default_to_the_rules_defaults() {
        let args = Args::try_parse_from(["guard"]).expect("no flags");
        assert_eq!(args.fork_rules(), crate::detect::fork::ForkRules::default());
        assert_eq!(
            args.crashloop_rules(),
            Some(crate::detect::crashloop::CrashLoopRules::default())
        );
        assert_eq!(args.leak_rules(), crate::detect::leak::LeakRules::default());
    }

    #[test]
    fn flags_are_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn kinds_parse_and_errors_name_the_choices() {
        let set = parse_kinds("fork, exit").expect("parse");
        assert_eq!(
            set.0.into_iter().collect::<Vec<_>>(),
            vec![EventKind::Fork, EventKind::Exit]
        );
        assert_eq!(
            parse_kinds("all").expect("all").0.len(),
            EventKind::ALL.len()
        );
        let err = parse_kinds("fork,forks").expect_err("bad kind");
        assert!(
            err.contains("\"forks\"") && err.contains("oom_kill"),
            "{err}"
        );
        assert!(parse_kinds(",").is_err());
        // Alerts only.
        assert!(parse_kinds("none").expect("none").0.is_empty());
        assert!(parse_kinds("none,fork").is_err());
    }

    #[test]
    fn nonsense_numbers_are_refused_with_the_range() {
        let parse = |args: &[&str]| {
            Args::try_parse_from(std::iter::once("guard").chain(args.iter().copied()))
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        for bad in [
            &["--fork-rate", "nan"][..],
            &["--fork-rate", "inf"],
            &["--fork-rate", "0"],
            &["--fork-rate", "1e-300"],
            &["--fork-growth", "0"],
            &["--pids-horizon", "0"],
            &["--mem-horizon", "-1"],
            &["--mem-horizon", "NaN"],
            &["--mem-headroom", "nan"],
            &["--queue", "0"],
            &["--queue", "100000000"],
            &["--crashloop", "1/60"],
            &["--crashloop", "5/0"],
            &["--crashloop-lifetime", "0"],
            &["--blocked-threshold", "inf"],
            &["--protect", "0"],
            &["--protect", "/proc/version"],
            &["--protect", "/no/such/cgroup"],
            &["--protect", ""],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
        let err = parse(&["--fork-rate", "inf"]).expect_err("inf");
        assert!(err.contains("10 to 100000"), "{err}");
        assert!(parse(&["--fork-rate", "250", "--mem-horizon", "2.5"]).is_ok());
    }

    #[test]
    fn ring_size_must_be_a_power_of_two() {
        assert_eq!(parse_ring_mib("32"), Ok(32));
        assert!(parse_ring_mib("24").is_err());
        assert!(parse_ring_mib("x").is_err());
    }
}
