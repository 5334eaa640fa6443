//! `cargo xtask bench`: the agent's cost and its figures, measured within one
//! run (never as timed assertions in tests).
//!
//! cost: the agent's CPU time per operation and per event, the host's CPU
//! per operation with and without it, the probes' kernel time, and its
//! RSS (see `cost`).
//!
//! fork rate: a tight fork+exit+wait loop (guard-workload forks N) in a cgroup
//! of its own, alternating rounds without and with the agent attached (the
//! agent streaming every event of the host as NDJSON to /dev/null, its
//! default configuration), and with the agent enforcing (--fork-action kill)
//! scoped to the loop's cgroup, so that the fork probe tags the loop and
//! counts every birth. Prints the medians and the ratios.
//!
//! fork bomb: a bash bomb in a cgroup with pids.max=1000, the agent scoped to
//! it with --fork-action kill. From the agent's own fork and exit records:
//! time from the bomb's first fork to its last process gone, the peak number
//! of bomb processes alive; from pids.events: whether the limit refused a
//! fork. Beside it, the same bomb under pids.max alone.
//!
//! bombs and refusal: see `bombs` (five bombs under kill here; kill,
//! kill without refusal and refuse in a Debian guest whose kernel refuses
//! forks).
//!
//! context switches: a pipe ping-pong between two processes pinned to one
//! CPU (two switches per round trip), rounds without and with the agent (its
//! sched_switch program runs on every switch). Prints the medians and the
//! ratio.
//!
//! memory runaway: a process allocating at a steady rate (100, 200,
//! 300 MiB/s and as fast as it can) toward 2 GiB in a 1 GiB memory cgroup,
//! the agent scoped to it with --mem-action kill. Per rate: the share of
//! runs in which guard killed it before the kernel's OOM killer fired, and
//! the headroom (limit minus anon + shmem) left when it acted.
//!
//! GUARD_BENCH_KEEP=1 keeps the agent's records of the memory rounds in
//! target/ and echoes its stderr.
//!
//! blocked storm: 20 writers blocked on a frozen loop-mounted ext4, the agent
//! scoped to their cgroup with --blocked-threshold 1 --blocked-storm 20.
//! From its records: the delay from each writer crossing the threshold to its
//! `blocked` report, and from the 20th crossing to the storm alert.

use std::{
    io::{BufRead as _, BufReader},
    os::unix::fs::DirBuilderExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

mod bombs;
mod cost;
mod memory;

use self::{
    bombs::{bombs_bench, refusal_bench},
    cost::cost_bench,
    memory::{collective_bench, memory_bench},
};
use anyhow::{Context as _, Result, bail};
use guard_tests::{FrozenFs, TestCgroup};

const FORKS: &str = "20000";

/// Where the agents a bench starts itself write incident reports and put
/// their stream socket: a root-only directory of the bench's own, removed
/// when the bench ends, so that a bench leaves nothing in /var/lib/guard or
/// /run/guard and still measures the agent as it runs (reports and stream
/// on). Agents started through the test harness get a directory of theirs.
fn reports_dir() -> PathBuf {
    PathBuf::from(format!("/run/guard-bench-{}", std::process::id()))
}

/// The flags that point an agent's reports and socket at [`reports_dir`];
/// none for an older build (GUARD_BENCH_BIN) that has no such flags.
fn report_args(guard: &Path) -> Result<Vec<String>> {
    let help = Command::new(guard)
        .arg("--help")
        .output()
        .with_context(|| format!("running {} --help", guard.display()))?;
    if !String::from_utf8_lossy(&help.stdout).contains("--incident-dir") {
        return Ok(Vec::new());
    }
    let dir = reports_dir();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    Ok(vec![
        "--incident-dir".into(),
        dir.join("incidents").to_string_lossy().into_owned(),
        "--socket".into(),
        dir.join("guard.sock").to_string_lossy().into_owned(),
    ])
}

pub fn run(workspace: &Path, rounds: u32, only: Option<&str>) -> Result<()> {
    let _cleanup = guard_tests::Defer(|| {
        let _ = std::fs::remove_dir_all(reports_dir());
    });
    match only {
        None => {
            cost_bench(workspace, rounds)?;
            fork_rate_bench(workspace, rounds)?;
            bomb_bench(workspace, rounds)?;
            ctx_switch_bench(workspace, rounds)?;
            storm_bench(workspace, rounds)?;
            memory_bench(workspace, rounds)?;
            crate::precision::bench(&workspace.join("target"))
        }
        Some("precision") => crate::precision::bench(&workspace.join("target")),
        Some("cost") => cost_bench(workspace, rounds),
        Some("memory") => memory_bench(workspace, rounds),
        Some("memory-collective") => collective_bench(rounds),
        Some("fork-rate") => fork_rate_bench(workspace, rounds),
        Some("fork-bomb") => bomb_bench(workspace, rounds),
        Some("bombs") => bombs_bench(workspace, rounds),
        Some("refusal") => {
            crate::setup_vm()?;
            refusal_bench(workspace, rounds)
        }
        Some("ctx-switch") => ctx_switch_bench(workspace, rounds),
        Some("blocked-storm") => storm_bench(workspace, rounds),
        Some(other) => {
            bail!(
                "unknown benchmark {other:?}: cost, fork-rate, fork-bomb, bombs, refusal, ctx-switch, \
                 blocked-storm, memory, memory-collective or precision"
            )
        }
    }
}

fn fork_rate_bench(workspace: &Path, rounds: u32) -> Result<()> {
    let guard = workspace.join("target/release/guard");
    let cg = TestCgroup::new("bench", 4096, 1 << 30);
    let scope = cg.pids_dir().canonicalize()?.to_string_lossy().into_owned();
    let mut without = Vec::new();
    let mut with = Vec::new();
    let mut enforcing = Vec::new();
    for round in 1..=rounds {
        without.push(fork_rate(&cg)?);
        let mut args = vec!["--json"];
        let extra = std::env::var("GUARD_BENCH_ARGS").unwrap_or_default();
        args.extend(extra.split_whitespace());
        let agent = AgentProcess::start(&guard, &args, Stdio::null())?;
        with.push(fork_rate(&cg)?);
        agent.stop()?;
        // Enforcing, scoped to the workload's own cgroup: the fork probe
        // tags the loop and counts every birth against the explosion rule
        // (which a fork+exit loop never meets: its live count stays flat).
        let args = ["--json", "--cgroup", &scope, "--fork-action", "kill"];
        let agent = AgentProcess::start(&guard, &args, Stdio::null())?;
        enforcing.push(fork_rate(&cg)?);
        agent.stop()?;
        eprintln!(
            "round {round}/{rounds}: {:.0} forks/s without the agent, {:.0} with, {:.0} enforcing in scope",
            without[without.len() - 1],
            with[with.len() - 1],
            enforcing[enforcing.len() - 1]
        );
    }
    let (a, b, c) = (
        median(&mut without),
        median(&mut with),
        median(&mut enforcing),
    );
    println!("fork+exit rate, median of {rounds} rounds of {FORKS} forks:");
    println!("  without agent           {a:>10.0} /s");
    println!("  with agent (default)    {b:>10.0} /s");
    println!("  with agent, enforcing   {c:>10.0} /s  (--fork-action kill, the loop in scope)");
    println!(
        "  ratio default           {:>10.3}  (overhead {:.1}%, target <= 3%)",
        b / a,
        (1.0 - b / a) * 100.0
    );
    println!(
        "  ratio enforcing         {:>10.3}  (overhead {:.1}%)",
        c / a,
        (1.0 - c / a) * 100.0
    );
    println!(
        "{}",
        serde_json::json!({"bench": "fork_rate", "rounds": rounds, "without_per_sec": a, "with_per_sec": b,
            "enforcing_per_sec": c, "ratio": b / a, "ratio_enforcing": c / a})
    );
    Ok(())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return 0.0;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn fork_rate(cg: &TestCgroup) -> Result<f64> {
    workload_rate(cg, &["forks", FORKS])
}

/// Runs the workload helper and returns the `per_sec` it printed.
fn workload_rate(cg: &TestCgroup, args: &[&str]) -> Result<f64> {
    let out = cg
        .workload(args)
        .output()
        .with_context(|| format!("running guard-workload {args:?}"))?;
    if !out.status.success() {
        bail!("guard-workload {args:?} failed: {}", out.status);
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("workload output")?;
    v["per_sec"]
        .as_f64()
        .context("no per_sec in workload output")
}

const BOMB: &str = ":(){ :|:& };:";
const BOMB_PIDS_MAX: u32 = 1000;

/// (pids.events "max" count, pids.current).
fn pids_figures(cg: &TestCgroup) -> (u64, u64) {
    let current = std::fs::read_to_string(cg.pids_dir().join("pids.current")).unwrap_or_default();
    (cg.pids_refused(), current.trim().parse().unwrap_or(0))
}

struct BombRound {
    contained_ms: f64,
    peak: u64,
    refused: u64,
    /// The fork probe's budget condemned the bomb before the agent acted.
    by_kernel: bool,
}

fn bomb_round(workspace: &Path, round: u32) -> Result<BombRound> {
    let guard = workspace.join("target/release/guard");
    let cg = TestCgroup::new(&format!("bench-bomb{round}"), BOMB_PIDS_MAX, 1 << 30);
    let dir = cg.pids_dir().canonicalize()?.to_string_lossy().into_owned();
    let log = workspace.join(format!("target/bench-bomb-{round}.json"));
    let file = std::fs::File::create(&log)?;
    let mut args = vec![
        "--json",
        "--cgroup",
        &dir,
        "--fork-action",
        "kill",
        "--events",
        "fork,exit",
    ];
    let extra = std::env::var("GUARD_BENCH_ARGS").unwrap_or_default();
    args.extend(extra.split_whitespace());
    let agent = AgentProcess::start(&guard, &args, Stdio::from(file))?;
    let _ = cg.spawn_bash(BOMB).wait();
    let deadline = Instant::now() + Duration::from_secs(20);
    while cg.live_named("bash") > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let (refused, _) = pids_figures(&cg);
    agent.stop()?;
    // The bomb's processes, from the agent's own records.
    let mut changes: Vec<(u64, i64)> = Vec::new();
    let mut by_kernel = false;
    for line in std::fs::read_to_string(&log)?.lines() {
        let r: serde_json::Value = serde_json::from_str(line)?;
        if (r["kind"] == "action" && r["outcome"]["condemned_by_kernel"] == true)
            || (r["kind"] == "alert" && r["condemned_by_kernel"] == true)
        {
            by_kernel = true;
        }
        if r["comm"] != "bash" || r["cgroup"] != dir.as_str() {
            continue;
        }
        let at = r["boot_ns"].as_u64().unwrap_or(0);
        match r["kind"].as_str() {
            Some("fork") if r["thread"] == false => changes.push((at, 1)),
            Some("exit") if r["group_dead"] == true => changes.push((at, -1)),
            _ => {}
        }
    }
    changes.sort();
    let (mut live, mut peak) = (0i64, 0i64);
    for &(_, d) in &changes {
        live += d;
        peak = peak.max(live);
    }
    let first = changes.first().map_or(0, |c| c.0);
    let last = changes
        .iter()
        .rev()
        .find(|c| c.1 < 0)
        .map_or(first, |c| c.0);
    if std::env::var_os("GUARD_BENCH_KEEP").is_none() {
        let _ = std::fs::remove_file(&log);
    }
    Ok(BombRound {
        contained_ms: (last - first) as f64 / 1e6,
        peak: peak as u64,
        refused,
        by_kernel,
    })
}

fn bomb_bench(workspace: &Path, rounds: u32) -> Result<()> {
    let mut results = Vec::new();
    for round in 1..=rounds {
        let r = bomb_round(workspace, round)?;
        eprintln!(
            "bomb round {round}/{rounds}: contained in {:.0} ms, peak {} alive, pids.max refused {} forks{}",
            r.contained_ms,
            r.peak,
            r.refused,
            if r.by_kernel {
                ", condemned by the fork probe first"
            } else {
                ""
            }
        );
        results.push(r);
    }
    // The same bomb with pids.max alone, for one second.
    let cg = TestCgroup::new("bench-bomb-alone", BOMB_PIDS_MAX, 1 << 30);
    let _ = cg.spawn_bash(BOMB).wait();
    std::thread::sleep(Duration::from_secs(1));
    let (alone_refused, alone_current) = pids_figures(&cg);
    drop(cg);

    let mut ms: Vec<f64> = results.iter().map(|r| r.contained_ms).collect();
    let mut peaks: Vec<f64> = results.iter().map(|r| r.peak as f64).collect();
    let clean = results.iter().filter(|r| r.refused == 0).count();
    let by_kernel = results.iter().filter(|r| r.by_kernel).count();
    let worst = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    println!("bash fork bomb, pids.max={BOMB_PIDS_MAX}, {rounds} rounds with --fork-action kill:");
    println!(
        "  first fork to last bomb process gone: median {:.0} ms, worst {:.0} ms (target < 250 ms)",
        median(&mut ms),
        worst(&ms)
    );
    println!(
        "  peak bomb processes alive: median {:.0}, worst {:.0} (target < {})",
        median(&mut peaks),
        worst(&peaks),
        BOMB_PIDS_MAX / 10
    );
    println!("  rounds in which pids.max never refused a fork: {clean}/{rounds} (target: all)");
    println!(
        "  rounds in which the fork probe condemned the bomb before the agent acted: {by_kernel}/{rounds}"
    );
    println!(
        "  pids.max alone, after 1 s: {alone_current} tasks (the limit), {alone_refused} forks refused, nothing contained"
    );
    println!(
        "{}",
        serde_json::json!({"bench": "fork_bomb", "rounds": rounds, "median_ms": median(&mut ms), "worst_ms": worst(&ms),
            "median_peak": median(&mut peaks), "worst_peak": worst(&peaks), "clean_rounds": clean, "by_kernel": by_kernel,
            "alone_refused": alone_refused, "alone_current": alone_current})
    );
    Ok(())
}

const ROUND_TRIPS: &str = "200000";

fn ping_pong(cg: &TestCgroup) -> Result<f64> {
    workload_rate(cg, &["pingpong", ROUND_TRIPS])
}

fn ctx_switch_bench(workspace: &Path, rounds: u32) -> Result<()> {
    let guard = workspace.join("target/release/guard");
    let cg = TestCgroup::new("bench-switch", 16, 256 << 20);
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        without.push(ping_pong(&cg)?);
        let agent = AgentProcess::start(&guard, &["--json"], Stdio::null())?;
        with.push(ping_pong(&cg)?);
        agent.stop()?;
        eprintln!(
            "round {round}/{rounds}: {:.0} round trips/s without the agent, {:.0} with",
            without[without.len() - 1],
            with[with.len() - 1]
        );
    }
    let (a, b) = (median(&mut without), median(&mut with));
    let ratio = b / a;
    println!(
        "pipe ping-pong on one CPU (2 context switches per round trip), median of {rounds} rounds of {ROUND_TRIPS}:"
    );
    println!("  without agent  {a:>10.0} round trips/s");
    println!("  with agent     {b:>10.0} round trips/s");
    println!(
        "  ratio          {ratio:>10.3}  (overhead {:.1}%, target <= 5%)",
        (1.0 - ratio) * 100.0
    );
    println!(
        "{}",
        serde_json::json!({"bench": "ctx_switch", "rounds": rounds, "without_per_sec": a, "with_per_sec": b, "ratio": ratio})
    );
    Ok(())
}

const STORM_WRITERS: usize = 20;

/// (per-task report delays, storm alert delay), in ms past the threshold.
fn storm_round(workspace: &Path, round: u32) -> Result<(Vec<f64>, f64)> {
    let guard = workspace.join("target/release/guard");
    let fs = FrozenFs::create();
    let cg = TestCgroup::new(&format!("bench-storm{round}"), 64, 256 << 20);
    let dir = cg.pids_dir().canonicalize()?.to_string_lossy().into_owned();
    let log = workspace.join(format!("target/bench-storm-{round}.json"));
    let agent = AgentProcess::start(
        &guard,
        &[
            "--json",
            "--cgroup",
            &dir,
            "--blocked-threshold",
            "1",
            "--blocked-storm",
            &STORM_WRITERS.to_string(),
        ],
        Stdio::from(std::fs::File::create(&log)?),
    )?;
    fs.freeze();
    let mut writers = Vec::new();
    for i in 0..STORM_WRITERS {
        let target = fs.mount.join(format!("file{i}"));
        writers.push(
            cg.command("/bin/sh")
                .arg("-c")
                .arg(format!("echo blocked > {}", target.display()))
                .spawn()
                .context("spawn writer")?,
        );
    }
    std::thread::sleep(Duration::from_millis(2500));
    fs.thaw();
    for mut w in writers {
        w.wait()?;
    }
    agent.stop()?;
    let text = std::fs::read_to_string(&log)?;
    let _ = std::fs::remove_file(&log);
    drop(cg);
    drop(fs);
    let mut crossings = Vec::new();
    let mut delays = Vec::new();
    let mut storm_at = None;
    for line in text.lines() {
        let r: serde_json::Value = serde_json::from_str(line)?;
        let at = r["boot_ns"].as_u64().unwrap_or(0);
        match r["kind"].as_str() {
            Some("blocked") => {
                let crossed = r["since_ns"].as_u64().unwrap_or(0) + 1_000_000_000;
                crossings.push(crossed);
                delays.push(at.saturating_sub(crossed) as f64 / 1e6);
            }
            Some("alert") if r["rule"] == "blocked_storm" => storm_at = Some(at),
            _ => {}
        }
    }
    if crossings.len() != STORM_WRITERS {
        bail!(
            "round {round}: {} of {STORM_WRITERS} writers reported",
            crossings.len()
        );
    }
    let storm_at = storm_at.with_context(|| format!("round {round}: no storm alert"))?;
    let last = crossings.iter().copied().max().unwrap_or(0);
    Ok((delays, storm_at.saturating_sub(last) as f64 / 1e6))
}

fn storm_bench(workspace: &Path, rounds: u32) -> Result<()> {
    let (mut reports, mut storms) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let (delays, storm) = storm_round(workspace, round)?;
        eprintln!(
            "storm round {round}/{rounds}: reports {:.0}..{:.0} ms past the threshold, storm alert {storm:.0} ms after the 20th crossing",
            delays.iter().copied().fold(f64::MAX, f64::min),
            delays.iter().copied().fold(0.0, f64::max)
        );
        reports.extend(delays);
        storms.push(storm);
    }
    let worst = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    println!(
        "blocked-task storm, {STORM_WRITERS} writers on a frozen ext4, --blocked-threshold 1, {rounds} rounds:"
    );
    println!(
        "  blocked report after crossing the threshold: median {:.0} ms, worst {:.0} ms",
        median(&mut reports),
        worst(&reports)
    );
    println!(
        "  storm alert after the {STORM_WRITERS}th crossing: median {:.0} ms, worst {:.0} ms",
        median(&mut storms),
        worst(&storms)
    );
    println!(
        "{}",
        serde_json::json!({"bench": "blocked_storm", "rounds": rounds,
            "report_median_ms": median(&mut reports), "report_worst_ms": worst(&reports),
            "storm_median_ms": median(&mut storms), "storm_worst_ms": worst(&storms)})
    );
    Ok(())
}

/// The agent with stdout to /dev/null, ready once it logs `ready:`.
struct AgentProcess(std::process::Child);

impl AgentProcess {
    fn start(guard: &Path, args: &[&str], stdout: Stdio) -> Result<Self> {
        let mut child = Command::new(guard)
            .args(args)
            .args(report_args(guard)?)
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", guard.display()))?;
        let stderr = child.stderr.take().context("stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let echo = std::env::var_os("GUARD_BENCH_KEEP").is_some();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if echo {
                    eprintln!("guard: {line}");
                }
                let ready = line.contains("ready:");
                if ready {
                    let _ = tx.send(());
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        if rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_err()
        {
            let _ = child.kill();
            bail!("the agent did not become ready");
        }
        Ok(AgentProcess(child))
    }

    fn stop(mut self) -> Result<()> {
        // SAFETY: signals our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
        let status = self.0.wait()?;
        if !status.success() {
            bail!("the agent exited with {status}");
        }
        Ok(())
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
