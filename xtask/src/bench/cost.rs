//! `cargo xtask bench --only cost`: what the agent costs the host, as CPU
//! time per operation, measured in one run.
//!
//! Three loops run in a cgroup of their own: fork+exit (`guard-workload
//! forks`), fork+exec+exit (`spawn N /bin/true`) and a pipe ping-pong of
//! context switches. Each runs without the agent, with the agent in its
//! default configuration (every event streamed as NDJSON into a pipe the
//! bench drains), and with the agent scoped by `--cgroup` to another cgroup
//! and enforcing (the loop out of scope). One agent per loop and
//! configuration, so that its `summary` counts that loop's events.
//!
//! Per loop and configuration, the medians over the rounds of:
//! - the agent's CPU time per operation and per event it saw: the agent
//!   runs in a cgroup of its own, whose v2 `cpu.stat` counts every thread
//!   in µs. The bench waits for the agent to go idle after the loop, so
//!   the work of a backlog is counted, and takes off what the agent spends
//!   idle over as long (measured for a second before the loop; printed on
//!   its own as CPU per second).
//! - the whole host's CPU time per operation (the root cgroup's
//!   `cpu.stat`), which also holds the probes' time in the kernel (it runs
//!   in the loop's tasks) and the cost of the bench's own pipe reader.
//! - the probes' kernel time per operation and per run, from the kernel's
//!   BPF run-time statistics (`BPF_ENABLE_STATS`, on only while the bench
//!   holds its descriptor; it adds two clock reads to every run).
//! - the loop's own rate, as a secondary ratio.
//!
//! Then the agent's RSS: idle after start, and after a million events at
//! the machine's top fork rate (one fork loop per CPU), with the events it
//! lost there.
//!
//! GUARD_BENCH_BIN=PATH measures another build of the agent.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use guard_tests::TestCgroup;
use serde_json::Value;

use super::median;

const FORKS: u64 = 20_000;
const SPAWNS: u64 = 4_000;
const ROUND_TRIPS: u64 = 100_000;
/// Events the RSS phase streams through the agent, at least.
const MILLION: u64 = 1_000_000;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Loop {
    Fork,
    Exec,
    Switch,
}

impl Loop {
    const ALL: [Loop; 3] = [Loop::Fork, Loop::Exec, Loop::Switch];

    fn name(self) -> &'static str {
        match self {
            Loop::Fork => "fork+exit",
            Loop::Exec => "fork+exec+exit",
            Loop::Switch => "ping-pong round trip",
        }
    }

    fn ops(self) -> u64 {
        match self {
            Loop::Fork => FORKS,
            Loop::Exec => SPAWNS,
            Loop::Switch => ROUND_TRIPS,
        }
    }

    fn args(self) -> Vec<String> {
        match self {
            Loop::Fork => vec!["forks".into(), FORKS.to_string()],
            Loop::Exec => vec!["spawn".into(), SPAWNS.to_string(), "/bin/true".into()],
            Loop::Switch => vec!["pingpong".into(), ROUND_TRIPS.to_string()],
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Config {
    None,
    Default,
    OutOfScope,
}

impl Config {
    const ALL: [Config; 3] = [Config::None, Config::Default, Config::OutOfScope];

    fn name(self) -> &'static str {
        match self {
            Config::None => "no agent",
            Config::Default => "default (all events as NDJSON)",
            Config::OutOfScope => "--cgroup elsewhere, enforcing",
        }
    }
}

/// One loop under one configuration.
#[derive(Default, Clone)]
struct Sample {
    rate: f64,
    host_us_per_op: f64,
    agent_us_per_op: f64,
    agent_us_per_event: f64,
    /// The agent's CPU per second while idle, µs.
    agent_idle_us_per_s: f64,
    events_per_op: f64,
    kernel_ns_per_op: f64,
    /// The process probes' (fork, exec, exit) share of it.
    process_ns_per_op: f64,
    /// Program name → (runs, ns) during the loop.
    programs: BTreeMap<String, (u64, u64)>,
    lost: u64,
}

/// `usage_usec` of a v2 `cpu.stat`.
fn cpu_usec(dir: &Path) -> Result<u64> {
    let path = dir.join("cpu.stat");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .find_map(|l| l.strip_prefix("usage_usec ")?.trim().parse().ok())
        .with_context(|| format!("no usage_usec in {}", path.display()))
}

/// The v2 root, whose `cpu.stat` counts the whole host.
fn v2_root() -> Result<PathBuf> {
    ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("cpu.stat").exists())
        .context("no cgroup v2 hierarchy with cpu.stat: the cost bench needs one")
}

/// A test cgroup and the v2 directory whose `cpu.stat` counts its members.
fn cgroup_with_cpu(name: &str, pids_max: u32, memory_max: u64) -> (TestCgroup, PathBuf) {
    let (cg, v2) = TestCgroup::new(name, pids_max, memory_max).with_v2_dir();
    let dir = v2.unwrap_or_else(|| cg.pids_dir().to_path_buf());
    (cg, dir)
}

/// Run time and run count of each of the agent's programs (by id).
fn program_stats(ids: &[u32]) -> BTreeMap<u32, (String, u64, u64)> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| ids.contains(&p.id()))
        .map(|p| {
            let name = p.name_as_str().unwrap_or("?").to_owned();
            (
                p.id(),
                (name, p.run_count(), p.run_time().as_nanos() as u64),
            )
        })
        .collect()
}

fn program_ids() -> Vec<u32> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| p.id())
        .collect()
}

/// The agent in a cgroup of its own, its stdout drained by a thread that
/// keeps the last record (the `summary`).
struct CostAgent {
    child: Child,
    reader: Option<std::thread::JoinHandle<(u64, String)>>,
    /// The programs it loaded.
    programs: Vec<u32>,
}

impl CostAgent {
    fn start(guard: &Path, cg: &TestCgroup, args: &[&str]) -> Result<Self> {
        let before = program_ids();
        let mut child = cg
            .command(guard)
            .args(args)
            .args(super::report_args(guard)?)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", guard.display()))?;
        let stdout = child.stdout.take().context("stdout")?;
        let reader = std::thread::spawn(move || {
            let (mut lines, mut last) = (0u64, String::new());
            for line in BufReader::with_capacity(1 << 20, stdout)
                .lines()
                .map_while(Result::ok)
            {
                lines += 1;
                last = line;
            }
            (lines, last)
        });
        let stderr = child.stderr.take().context("stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("ready:") {
                    let _ = tx.send(());
                }
                if line.contains("ERROR") || line.contains("error:") {
                    eprintln!("guard: {line}");
                }
            }
        });
        if rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let _ = child.kill();
            bail!("the agent did not become ready");
        }
        let programs = program_ids()
            .into_iter()
            .filter(|id| !before.contains(id))
            .collect();
        Ok(CostAgent {
            child,
            reader: Some(reader),
            programs,
        })
    }

    fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                l.strip_prefix("VmRSS:")?
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    }

    /// Stops it; returns its `summary` record.
    fn stop(mut self) -> Result<Value> {
        // SAFETY: signals our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait()?;
        if !status.success() {
            bail!("the agent exited with {status}");
        }
        let (_, last) = self
            .reader
            .take()
            .context("reader")?
            .join()
            .map_err(|_| anyhow::anyhow!("the stdout reader panicked"))?;
        let summary: Value = serde_json::from_str(&last).context("the agent's last record")?;
        if summary["kind"] != "summary" {
            bail!("the agent's last record is not its summary: {last}");
        }
        Ok(summary)
    }
}

impl Drop for CostAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the agent's cgroup used less than 1 ms of CPU in 200 ms (it
/// worked through its backlog), at most 10 s.
fn settle(agent_cpu: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = cpu_usec(agent_cpu)?;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        let now = cpu_usec(agent_cpu)?;
        if now - last < 1000 {
            return Ok(());
        }
        last = now;
    }
    Ok(())
}

fn run_loop(cg: &TestCgroup, which: Loop) -> Result<f64> {
    let args = which.args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let started = Instant::now();
    let out = cg
        .workload(&args)
        .output()
        .with_context(|| format!("running guard-workload {args:?}"))?;
    let elapsed = started.elapsed();
    if !out.status.success() {
        bail!("guard-workload {args:?} failed: {}", out.status);
    }
    Ok(which.ops() as f64 / elapsed.as_secs_f64())
}

/// The fork, exec and exit programs (named `process_*`; older builds'
/// `sched_process_fork|exec|exit` show cut to 15 bytes).
fn is_process_probe(name: &str) -> bool {
    name.starts_with("process_") || name == "sched_process_f" || name == "sched_process_e"
}

/// Sum of the agent's events by kind in a summary's `seen`.
fn seen_total(summary: &Value) -> u64 {
    summary["seen"]
        .as_object()
        .map_or(0, |m| m.values().filter_map(Value::as_u64).sum())
}

fn lost_total(summary: &Value) -> u64 {
    summary["lost"].as_u64().unwrap_or(0)
}

struct Setup {
    guard: PathBuf,
    host: PathBuf,
    work: TestCgroup,
    agent_cg: TestCgroup,
    agent_cpu: PathBuf,
    /// The scope of the out-of-scope agent: an empty cgroup of its own.
    elsewhere: String,
    _elsewhere_cg: TestCgroup,
}

fn sample(s: &Setup, which: Loop, config: Config) -> Result<Sample> {
    let args: Vec<&str> = match config {
        Config::None => Vec::new(),
        Config::Default => vec!["--json"],
        Config::OutOfScope => vec!["--json", "--cgroup", &s.elsewhere, "--fork-action", "kill"],
    };
    let agent = match config {
        Config::None => None,
        _ => Some(CostAgent::start(&s.guard, &s.agent_cg, &args)?),
    };
    let mut idle_us_per_s = 0.0;
    if agent.is_some() {
        settle(&s.agent_cpu)?;
        let (before, at) = (cpu_usec(&s.agent_cpu)?, Instant::now());
        std::thread::sleep(Duration::from_secs(1));
        idle_us_per_s = (cpu_usec(&s.agent_cpu)? - before) as f64 / at.elapsed().as_secs_f64();
    }
    let ids = agent
        .as_ref()
        .map(|a| a.programs.clone())
        .unwrap_or_default();
    let started = Instant::now();
    let (host0, agent0, progs0) = (
        cpu_usec(&s.host)?,
        cpu_usec(&s.agent_cpu)?,
        program_stats(&ids),
    );
    let rate = run_loop(&s.work, which)?;
    if agent.is_some() {
        settle(&s.agent_cpu)?;
    }
    let (host1, agent1, progs1) = (
        cpu_usec(&s.host)?,
        cpu_usec(&s.agent_cpu)?,
        program_stats(&ids),
    );
    let ops = which.ops() as f64;
    let idle_share = idle_us_per_s * started.elapsed().as_secs_f64();
    let mut out = Sample {
        rate,
        host_us_per_op: (host1 - host0) as f64 / ops,
        agent_idle_us_per_s: idle_us_per_s,
        ..Sample::default()
    };
    for (id, (name, runs, ns)) in &progs1 {
        let (r0, n0) = progs0.get(id).map_or((0, 0), |p| (p.1, p.2));
        let e = out.programs.entry(name.clone()).or_default();
        e.0 += runs - r0;
        e.1 += ns - n0;
    }
    out.kernel_ns_per_op = out.programs.values().map(|p| p.1).sum::<u64>() as f64 / ops;
    out.process_ns_per_op = out
        .programs
        .iter()
        .filter(|(name, _)| is_process_probe(name))
        .map(|(_, p)| p.1)
        .sum::<u64>() as f64
        / ops;
    if let Some(agent) = agent {
        let summary = agent.stop()?;
        let events = seen_total(&summary);
        let agent_us = ((agent1 - agent0) as f64 - idle_share).max(0.0);
        out.agent_us_per_op = agent_us / ops;
        out.events_per_op = events as f64 / ops;
        out.agent_us_per_event = if events > 0 {
            agent_us / events as f64
        } else {
            0.0
        };
        out.lost = lost_total(&summary);
    }
    Ok(out)
}

/// The agent's RSS idle, then after a million events at the top fork rate
/// (one loop per CPU); and the events lost meanwhile.
fn footprint(s: &Setup) -> Result<(u64, u64, u64, u64, f64)> {
    let agent = CostAgent::start(&s.guard, &s.agent_cg, &["--json"])?;
    std::thread::sleep(Duration::from_secs(1));
    let idle = agent.rss_kib();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    // fork + exit: two events per fork.
    let per_loop = MILLION / 2 / cpus + 1;
    let started = Instant::now();
    let loops: Vec<Child> = (0..cpus)
        .map(|_| {
            s.work
                .workload(&["forks", &per_loop.to_string()])
                .stdout(Stdio::null())
                .spawn()
                .context("starting a fork loop")
        })
        .collect::<Result<_>>()?;
    for mut l in loops {
        let status = l.wait()?;
        if !status.success() {
            bail!("a fork loop failed: {status}");
        }
    }
    let rate = (per_loop * cpus) as f64 / started.elapsed().as_secs_f64();
    settle(&s.agent_cpu)?;
    let after = agent.rss_kib();
    let summary = agent.stop()?;
    Ok((
        idle,
        after,
        seen_total(&summary),
        lost_total(&summary),
        rate,
    ))
}

pub fn cost_bench(workspace: &Path, rounds: u32) -> Result<()> {
    // GUARD_BENCH_BIN measures another build (an older one, for a before
    // and after) with the same loops.
    let guard = std::env::var_os("GUARD_BENCH_BIN")
        .map_or_else(|| workspace.join("target/release/guard"), PathBuf::from);
    let (work, _) = cgroup_with_cpu("bench-cost", 4096, 1 << 30);
    let (agent_cg, agent_cpu) = cgroup_with_cpu("bench-cost-agent", 256, 1 << 30);
    let elsewhere_cg = TestCgroup::new("bench-cost-elsewhere", 16, 64 << 20);
    let elsewhere = elsewhere_cg
        .pids_dir()
        .canonicalize()?
        .to_string_lossy()
        .into_owned();
    let s = Setup {
        guard,
        host: v2_root()?,
        work,
        agent_cg,
        agent_cpu,
        elsewhere,
        _elsewhere_cg: elsewhere_cg,
    };
    // Held while the bench runs: the kernel counts every program's runs.
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .context("enabling BPF run-time statistics (needs 5.8+ and CAP_SYS_ADMIN)")?;
    let mut all: BTreeMap<(Loop, Config), Vec<Sample>> = BTreeMap::new();
    for round in 1..=rounds {
        for which in Loop::ALL {
            for config in Config::ALL {
                let got = sample(&s, which, config)?;
                eprintln!(
                    "round {round}/{rounds} {:<22} {:<32} {:>8.0}/s  host {:>6.2} µs/op  agent {:>6.2} µs/op (idle {:.1} ms/s)  probes {:>6.0} ns/op  lost {}",
                    which.name(),
                    config.name(),
                    got.rate,
                    got.host_us_per_op,
                    got.agent_us_per_op,
                    got.agent_idle_us_per_s / 1000.0,
                    got.kernel_ns_per_op,
                    got.lost
                );
                all.entry((which, config)).or_default().push(got);
            }
        }
    }
    let med = |v: &[Sample], f: fn(&Sample) -> f64| {
        let mut xs: Vec<f64> = v.iter().map(f).collect();
        median(&mut xs)
    };
    let mut json = serde_json::Map::new();
    println!("agent cost, median of {rounds} rounds (CPU time from cgroup v2 cpu.stat):");
    for which in Loop::ALL {
        println!("  {} loop, {} per round:", which.name(), which.ops());
        let base = all.get(&(which, Config::None)).cloned().unwrap_or_default();
        let (base_rate, base_host) = (med(&base, |s| s.rate), med(&base, |s| s.host_us_per_op));
        for config in Config::ALL {
            let v = all.get(&(which, config)).cloned().unwrap_or_default();
            let (rate, host) = (med(&v, |s| s.rate), med(&v, |s| s.host_us_per_op));
            let (agent, per_event, events) = (
                med(&v, |s| s.agent_us_per_op),
                med(&v, |s| s.agent_us_per_event),
                med(&v, |s| s.events_per_op),
            );
            let kernel = med(&v, |s| s.kernel_ns_per_op);
            let idle = med(&v, |s| s.agent_idle_us_per_s);
            let process = med(&v, |s| s.process_ns_per_op);
            let lost: u64 = v.iter().map(|s| s.lost).sum();
            if config == Config::None {
                println!(
                    "    {:<32} host {host:>6.2} µs/op  rate {rate:>8.0}/s",
                    config.name()
                );
            } else {
                let per_event = if events >= 0.01 {
                    format!("{per_event:.2} µs/event")
                } else {
                    "no events".to_owned()
                };
                println!(
                    "    {:<32} host {host:>6.2} µs/op (+{:.2})  agent {agent:>6.2} µs/op, {per_event} ({events:.2} events/op; idle {:.1} ms/s)  probes {kernel:.0} ns/op (fork/exec/exit {process:.0})  rate ratio {:.3}  lost {lost}",
                    config.name(),
                    host - base_host,
                    idle / 1000.0,
                    rate / base_rate,
                );
            }
            json.insert(
                format!("{:?}_{:?}", which, config).to_lowercase(),
                serde_json::json!({"rate": rate, "host_us_per_op": host, "agent_us_per_op": agent,
                    "agent_us_per_event": per_event, "events_per_op": events, "probes_ns_per_op": kernel,
                    "process_probes_ns_per_op": process, "agent_idle_us_per_s": idle,
                    "lost": lost}),
            );
        }
    }
    // Per program, in the default configuration: ns per run.
    println!("  probes' kernel time per run (default configuration, all loops):");
    let mut per_program: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for which in Loop::ALL {
        for sample in all.get(&(which, Config::Default)).into_iter().flatten() {
            for (name, (runs, ns)) in &sample.programs {
                let e = per_program.entry(name.clone()).or_default();
                e.0 += runs;
                e.1 += ns;
            }
        }
    }
    for (name, (runs, ns)) in &per_program {
        if *runs > 0 {
            println!(
                "    {name:<18} {:>8.0} ns/run over {runs} runs",
                *ns as f64 / *runs as f64
            );
            json.insert(
                format!("ns_per_run_{name}"),
                serde_json::json!(*ns as f64 / *runs as f64),
            );
        }
    }
    let (idle, after, events, lost, rate) = footprint(&s)?;
    println!(
        "  agent RSS: {:.1} MiB idle, {:.1} MiB after {events} events at {rate:.0} forks/s ({} loops), {lost} lost",
        idle as f64 / 1024.0,
        after as f64 / 1024.0,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    json.insert("rss_idle_kib".into(), idle.into());
    json.insert("rss_after_kib".into(), after.into());
    json.insert("footprint_events".into(), events.into());
    json.insert("footprint_lost".into(), lost.into());
    json.insert("footprint_forks_per_sec".into(), rate.into());
    json.insert("bench".into(), "cost".into());
    json.insert("rounds".into(), rounds.into());
    println!("{}", Value::Object(json));
    Ok(())
}
