//! bombs: five bombs (bash, dash, perl's `fork while fork`, Python's
//! `os.fork()` loop, a thread bomb) under `--fork-action kill` on this
//! machine, `rounds` each, in cgroups with pids.max=1000: the peak
//! pids.current (threads and zombies included), the count at the fork
//! probe's condemnation, and whether pids.max refused a fork.
//!
//! refusal: the same five bombs in a Debian 6.12 guest, whose kernel
//! refuses forks (this machine's does not load LSM programs), with this
//! machine's bash, dash, perl and Python copied in: under `kill` (which
//! refuses first) and `refuse` (pids.current 20 ms after the condemnation
//! and its peak after, and the members still alive), `rounds` each, and
//! `kill --no-lsm` (signals alone) a quarter as often. Guest timings are
//! emulated (TCG): counts compare, milliseconds do not.

use std::path::Path;

use anyhow::{Result, bail};
use guard_tests::bombs::{Round, five_bombs, median_worst, round};
use serde_json::Value;

const PIDS_MAX: u32 = 1000;

pub fn bombs_bench(workspace: &Path, rounds: u32) -> Result<()> {
    let workload = workspace.join("target/release/guard-workload");
    let workload = workload.to_string_lossy();
    let shapes = five_bombs(&workload);
    let mut all = Vec::new();
    let mut n = 0;
    for shape in &shapes {
        for i in 1..=rounds {
            n += 1;
            let r = round(shape, "kill", &[], PIDS_MAX, &format!("bench-bombs-{n}"));
            eprintln!(
                "{} round {i}/{rounds}: peak {} tasks, {} at the verdict, pids.max refused {}",
                shape.name,
                r.peak,
                r.at_verdict.map_or("?".into(), |v| v.to_string()),
                r.refused_by_limit
            );
            all.push(r);
        }
    }
    println!(
        "five bombs under --fork-action kill on this machine ({rounds} rounds each, pids.max={PIDS_MAX}; \
         the kernel here refuses no forks, so kill is signals alone):"
    );
    print_table(&all, rounds, false);
    Ok(())
}

pub fn refusal_bench(workspace: &Path, rounds: u32) -> Result<()> {
    let lines = crate::vm::guest(
        workspace,
        "6.12",
        "bench",
        &format!(
            "guard.rounds={rounds} guard.only={}",
            // Only the rounds of one action (kill, refuse, nolsm): for
            // looking into one of them.
            std::env::var("GUARD_BENCH_ONLY").unwrap_or_default()
        ),
        120,
        true,
    )?;
    let mut all = Vec::new();
    let mut failed = Vec::new();
    for line in lines.iter().filter(|l| l.name == "bench") {
        if !line.ok {
            failed.push(line.detail.clone());
            continue;
        }
        let v: Value = serde_json::from_str(&line.detail)?;
        let shape: &'static str = match v["shape"].as_str() {
            Some("bash") => "bash",
            Some("dash") => "dash",
            Some("perl") => "perl",
            Some("python") => "python",
            Some("threads") => "threads",
            other => bail!("unknown shape {other:?}"),
        };
        let lsm = v["lsm"] == true;
        let action = v["action"].as_str().unwrap_or("?");
        all.push(Round {
            shape,
            action: if lsm {
                action.to_owned()
            } else {
                format!("{action} --no-lsm")
            },
            peak: v["peak"].as_u64().unwrap_or(0),
            at_verdict: v["at_verdict"].as_u64(),
            at_verdict_20ms: v["at_verdict_20ms"].as_u64(),
            peak_after_20ms: v["peak_after_20ms"].as_u64(),
            refused_by_limit: v["refused_by_limit"].as_u64().unwrap_or(0),
            refused_forks: v["refused_forks"].as_u64(),
            slipped_forks: v["slipped_forks"].as_u64(),
            gone_ms: v["gone_ms"].as_f64(),
            alive_refused: v["alive_refused"].as_u64(),
        });
    }
    if all.is_empty() {
        bail!("the guest printed no rounds (see target/vm/console-6.12-bench.log)");
    }
    println!("bombs in a Debian 6.12 guest ({rounds} rounds each, pids.max={PIDS_MAX}):");
    print_table(&all, rounds, true);
    if !failed.is_empty() {
        println!(
            "{} rounds failed in the guest (console in target/vm/console-6.12-bench.log):",
            failed.len()
        );
        for f in &failed {
            println!("  {f}");
        }
    }
    print_cost(&lines)?;
    Ok(())
}

/// The guest's fork-rate rounds: with the LSM program and without, for a
/// forker outside every tagged subtree and one inside a watched one.
fn print_cost(lines: &[crate::vm::CheckLine]) -> Result<()> {
    let mut rows: Vec<(String, bool, f64)> = Vec::new();
    for line in lines.iter().filter(|l| l.name == "bench-cost") {
        if !line.ok {
            bail!("a guest cost round failed: {}", line.detail);
        }
        let v: Value = serde_json::from_str(&line.detail)?;
        rows.push((
            v["place"].as_str().unwrap_or("?").to_owned(),
            v["lsm"] == true,
            v["forks_per_sec"].as_f64().unwrap_or(0.0),
        ));
    }
    if rows.is_empty() {
        // GUARD_BENCH_ONLY: bomb rounds alone.
        return Ok(());
    }
    println!("fork+exit+wait rate in the guest, the agent attached, medians of alternated rounds:");
    println!("| forker | with the LSM program | --no-lsm | ratio |");
    println!("|---|---|---|---|");
    let mut summary = Vec::new();
    for place in ["outside", "inside"] {
        let median_of = |lsm: bool| {
            median_worst(
                &mut rows
                    .iter()
                    .filter(|r| r.0 == place && r.1 == lsm)
                    .map(|r| r.2)
                    .collect::<Vec<_>>(),
            )
            .0
        };
        let (with, without) = (median_of(true), median_of(false));
        let ratio = if without > 0.0 { with / without } else { 0.0 };
        println!(
            "| {} | {with:.0}/s | {without:.0}/s | {ratio:.3} |",
            if place == "outside" {
                "outside every tagged subtree"
            } else {
                "in a watched subtree"
            }
        );
        summary.push(serde_json::json!({"forker": place, "with_lsm_per_sec": with, "without_per_sec": without, "ratio": ratio}));
    }
    println!(
        "{}",
        serde_json::json!({"bench": "refusal_cost", "rows": summary})
    );
    println!("the programs' own run time per call (kernel.bpf_stats_enabled), 3000 forks:");
    println!("| forker | program | runs | ns per run |");
    println!("|---|---|---|---|");
    let mut stats = Vec::new();
    for line in lines.iter().filter(|l| l.name == "bench-stats") {
        let v: Value = serde_json::from_str(&line.detail)?;
        println!(
            "| {} | {} | {} | {:.0} |",
            v["place"].as_str().unwrap_or("?"),
            v["program"].as_str().unwrap_or("?"),
            v["runs"],
            v["ns_per_run"].as_f64().unwrap_or(0.0)
        );
        stats.push(v);
    }
    println!(
        "{}",
        serde_json::json!({"bench": "refusal_stats", "rows": stats})
    );
    Ok(())
}

fn print_table(all: &[Round], rounds: u32, refuse_columns: bool) {
    println!(
        "| bomb | action | peak tasks, median / worst | at the verdict, median | {}pids.max refused a fork |",
        if refuse_columns {
            "growth 20 ms after the verdict on, median / worst | forks refused, median | "
        } else {
            ""
        }
    );
    println!(
        "|---|---|---|---|{}---|",
        if refuse_columns { "---|---|" } else { "" }
    );
    let mut keys: Vec<(&str, &str)> = all.iter().map(|r| (r.shape, r.action.as_str())).collect();
    keys.dedup();
    let mut summary = Vec::new();
    for (shape, action) in keys {
        let rs: Vec<&Round> = all
            .iter()
            .filter(|r| r.shape == shape && r.action == action)
            .collect();
        let (peak_med, peak_worst) =
            median_worst(&mut rs.iter().map(|r| r.peak as f64).collect::<Vec<_>>());
        let (verdict_med, _) = median_worst(
            &mut rs
                .iter()
                .filter_map(|r| r.at_verdict.map(|v| v as f64))
                .collect::<Vec<_>>(),
        );
        let (growth_med, growth_worst) = median_worst(
            &mut rs
                .iter()
                .filter_map(|r| Some(r.peak_after_20ms? as f64 - r.at_verdict_20ms? as f64))
                .collect::<Vec<_>>(),
        );
        let (refused_med, _) = median_worst(
            &mut rs
                .iter()
                .filter_map(|r| r.refused_forks.map(|v| v as f64))
                .collect::<Vec<_>>(),
        );
        let (slipped_med, slipped_worst) = median_worst(
            &mut rs
                .iter()
                .filter_map(|r| r.slipped_forks.map(|v| v as f64))
                .collect::<Vec<_>>(),
        );
        let limited = rs.iter().filter(|r| r.refused_by_limit > 0).count();
        let (alive_med, _) = median_worst(
            &mut rs
                .iter()
                .filter_map(|r| r.alive_refused.map(|v| v as f64))
                .collect::<Vec<_>>(),
        );
        let refuse_cells = if refuse_columns {
            format!("{growth_med:+.0} / {growth_worst:+.0} | {refused_med:.0} | ")
        } else {
            String::new()
        };
        println!(
            "| {shape} | {action} | {peak_med:.0} / {peak_worst:.0} | {verdict_med:.0} | {refuse_cells}{limited}/{} |",
            rs.len()
        );
        summary.push(
            serde_json::json!({"shape": shape, "action": action, "rounds": rs.len(),
            "median_peak": peak_med, "worst_peak": peak_worst, "median_at_verdict": verdict_med,
            "median_growth_after_20ms": growth_med, "worst_growth_after_20ms": growth_worst,
            "median_refused_forks": refused_med, "limit_refused_rounds": limited,
            "median_slipped_forks": slipped_med, "worst_slipped_forks": slipped_worst,
            "median_alive_refused": alive_med}),
        );
    }
    println!(
        "{}",
        serde_json::json!({"bench": if refuse_columns { "refusal" } else { "bombs" }, "rounds": rounds, "rows": summary})
    );
}
