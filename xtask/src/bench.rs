//! `cargo xtask bench`: the agent's cost, measured as ratios within one run
//! (never as timed assertions in tests).
//!
//! fork rate: a tight fork+exit+wait loop (guard-workload forks N) in a cgroup
//! of its own, alternating rounds without and with the agent attached (the
//! agent streaming every event of the host as NDJSON to /dev/null, its
//! default configuration). Prints the medians and the ratio.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use guard_tests::TestCgroup;

const FORKS: &str = "20000";

pub fn run(workspace: &Path, rounds: u32) -> Result<()> {
    let guard = workspace.join("target/release/guard");
    let cg = TestCgroup::new("bench", 4096, 1 << 30);
    let mut without = Vec::new();
    let mut with = Vec::new();
    for round in 1..=rounds {
        without.push(fork_rate(&cg)?);
        let agent = AgentProcess::start(&guard, &["--json"])?;
        with.push(fork_rate(&cg)?);
        agent.stop()?;
        eprintln!(
            "round {round}/{rounds}: {:.0} forks/s without the agent, {:.0} with",
            without[without.len() - 1],
            with[with.len() - 1]
        );
    }
    let (a, b) = (median(&mut without), median(&mut with));
    let ratio = b / a;
    println!("fork+exit rate, median of {rounds} rounds of {FORKS} forks:");
    println!("  without agent  {a:>10.0} /s");
    println!("  with agent     {b:>10.0} /s");
    println!(
        "  ratio          {ratio:>10.3}  (overhead {:.1}%, target <= 3%)",
        (1.0 - ratio) * 100.0
    );
    println!(
        "{}",
        serde_json::json!({"bench": "fork_rate", "rounds": rounds, "without_per_sec": a, "with_per_sec": b, "ratio": ratio})
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
    let out = cg
        .workload(&["forks", FORKS])
        .output()
        .context("running guard-workload")?;
    if !out.status.success() {
        bail!("guard-workload failed: {}", out.status);
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("workload output")?;
    v["per_sec"]
        .as_f64()
        .context("no per_sec in workload output")
}

/// The agent with stdout to /dev/null, ready once it logs `ready:`.
struct AgentProcess(std::process::Child);

impl AgentProcess {
    fn start(guard: &Path, args: &[&str]) -> Result<Self> {
        let mut child = Command::new(guard)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", guard.display()))?;
        let stderr = child.stderr.take().context("stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
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
