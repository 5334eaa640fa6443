//! The memory benchmarks: a runaway at several rates, and the collective
//! shapes of the incidents (runners and servers).

use super::*;

/// How a memory round ended.
struct MemoryRound {
    /// guard killed the hog before the OOM killer fired.
    stopped: bool,
    /// Limit minus the cgroup's anon + shmem at the action.
    headroom_mib: Option<f64>,
    /// MiB/s the alert measured.
    rate: Option<f64>,
}

fn memory_round(workspace: &Path, rate: &str, round: u32) -> Result<MemoryRound> {
    const LIMIT: u64 = 1 << 30;
    let guard = workspace.join("target/release/guard");
    let cg = TestCgroup::new(&format!("bench-mem{round}"), 16, LIMIT);
    let dir = cg
        .memory_dir()
        .canonicalize()?
        .to_string_lossy()
        .into_owned();
    let log = workspace.join(format!("target/bench-mem-{rate}-{round}.json"));
    let agent = AgentProcess::start(
        &guard,
        &["--json", "--cgroup", &dir, "--mem-action", "kill"],
        Stdio::from(std::fs::File::create(&log)?),
    )?;
    let status = cg
        .workload(&["grow", rate, "2048", "5"])
        .stdout(Stdio::null())
        .status()
        .context("running the hog")?;
    agent.stop()?;
    let oom_kills: u64 = std::fs::read_to_string(cg.memory_dir().join("memory.oom_control"))
        .or_else(|_| std::fs::read_to_string(cg.memory_dir().join("memory.events")))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
        .unwrap_or(0);
    let text = std::fs::read_to_string(&log)?;
    if std::env::var_os("GUARD_BENCH_KEEP").is_none() {
        let _ = std::fs::remove_file(&log);
    }
    let mut acted = None;
    let mut measured = None;
    for line in text.lines() {
        let r: serde_json::Value = serde_json::from_str(line)?;
        if r["detector"] != "memory" {
            continue;
        }
        match r["kind"].as_str() {
            Some("alert") => measured = r["mib_per_sec"].as_f64(),
            Some("action") => acted = r["usage_before_bytes"].as_u64(),
            _ => {}
        }
    }
    if status.success() {
        bail!("the hog finished: neither guard nor the OOM killer stopped it");
    }
    Ok(MemoryRound {
        stopped: acted.is_some() && oom_kills == 0,
        headroom_mib: acted.map(|usage| LIMIT.saturating_sub(usage) as f64 / f64::from(1 << 20)),
        rate: measured,
    })
}

pub(super) fn memory_bench(workspace: &Path, rounds: u32) -> Result<()> {
    println!(
        "memory runaway toward 2 GiB in a 1 GiB memory cgroup, --mem-action kill, {rounds} rounds per rate:"
    );
    let mut figures = Vec::new();
    for rate in ["100", "200", "300", "0"] {
        let mut results = Vec::new();
        for round in 1..=rounds {
            let r = memory_round(workspace, rate, round)?;
            eprintln!(
                "rate {rate} round {round}/{rounds}: {} (headroom {:?} MiB, measured {:?} MiB/s)",
                if r.stopped {
                    "stopped by guard"
                } else {
                    "OOM killer"
                },
                r.headroom_mib.map(|h| h.round()),
                r.rate
            );
            results.push(r);
        }
        let stopped = results.iter().filter(|r| r.stopped).count();
        let mut headroom: Vec<f64> = results.iter().filter_map(|r| r.headroom_mib).collect();
        let mut rates: Vec<f64> = results.iter().filter_map(|r| r.rate).collect();
        let least = headroom.iter().copied().fold(f64::MAX, f64::min);
        let label = if rate == "0" {
            "as fast as it can".to_owned()
        } else {
            format!("{rate} MiB/s")
        };
        println!(
            "  {label:<18} stopped before the OOM killer {stopped}/{rounds}; headroom left median {:.0} MiB, least {:.0} MiB; measured rate median {:.0} MiB/s",
            median(&mut headroom),
            if least == f64::MAX { 0.0 } else { least },
            median(&mut rates)
        );
        figures.push(
            serde_json::json!({"rate": rate, "stopped": stopped, "rounds": rounds,
            "headroom_median_mib": median(&mut headroom), "measured_rate_mib": median(&mut rates)}),
        );
    }
    println!(
        "{}",
        serde_json::json!({"bench": "memory", "target": "100% stopped before the OOM killer", "rates": figures})
    );
    collective_bench(rounds)
}

/// One round of a collective runaway: (stopped before the OOM killer with
/// the bystander alive, taken whole at its root, headroom MiB, seconds to
/// act).
fn collective_round(slug: &str, script: &str) -> Result<(bool, bool, Option<f64>, Option<f64>)> {
    let cg = TestCgroup::new(&format!("bench-{slug}"), 1024, 1 << 30);
    let scope = cg
        .memory_dir()
        .canonicalize()?
        .to_string_lossy()
        .into_owned();
    let mut agent = guard_tests::Agent::start(&[
        "--cgroup",
        &scope,
        "--mem-action",
        "kill",
        "--events",
        "exit",
    ]);
    let w = guard_tests::workload_bin();
    let mut bystander = cg.spawn_bash(&format!("exec {} alloc 200 600", w.display()));
    std::thread::sleep(Duration::from_millis(2000));
    let started = Instant::now();
    let mut runaway = cg.spawn_bash(script);
    let root = u64::from(runaway.id());
    let action = agent.try_wait_for(Duration::from_secs(40), |r| {
        r["kind"] == "action" && r["detector"] == "memory"
    });
    let took = started.elapsed().as_secs_f64();
    // Judged before the cgroup is emptied.
    std::thread::sleep(Duration::from_millis(300));
    let alive = matches!(bystander.try_wait(), Ok(None));
    let oom_kills = cg.oom_kills();
    cg.kill_all();
    let _ = runaway.wait();
    let _ = bystander.kill();
    let _ = bystander.wait();
    drop(agent.stop());
    let Some(action) = action else {
        return Ok((false, false, None, None));
    };
    let headroom = action["usage_before_bytes"]
        .as_u64()
        .map(|u| ((1u64 << 30).saturating_sub(u)) as f64 / f64::from(1 << 20));
    let whole = action["offender"]["pid"].as_u64() == Some(root);
    Ok((oom_kills == 0 && alive, whole, headroom, Some(took)))
}

/// The collective shapes of the incidents, in a 1 GiB memory cgroup beside
/// a bystander holding 200 MiB: a runner whose workers all grow, at
/// several worker counts and rates, and a server spawning children that
/// each hold 30 MiB and never exit, at two rates.
pub(super) fn collective_bench(rounds: u32) -> Result<()> {
    let w = guard_tests::workload_bin();
    let w = w.display();
    let mut shapes: Vec<(String, String)> = Vec::new();
    for (workers, rate) in [(2, 100), (4, 60), (8, 30)] {
        shapes.push((
            format!("runner, {workers} workers x {rate} MiB/s"),
            format!(
                "for i in $(seq {workers}); do {w} grow {rate} 400 120 > /dev/null & done; wait"
            ),
        ));
    }
    for per_sec in [5, 10] {
        shapes.push((
            format!("server, {per_sec} children/s x 30 MiB"),
            format!(
                "while :; do {w} alloc 30 600 > /dev/null & sleep {:.2}; done",
                1.0 / f64::from(per_sec)
            ),
        ));
    }
    println!(
        "collective memory runaways in a 1 GiB cgroup beside a 200 MiB bystander, {rounds} rounds each:"
    );
    println!(
        "| shape | stopped before the OOM killer, bystander alive | taken whole at its root | headroom left, median | time to act, median |"
    );
    println!("|---|---|---|---|---|");
    let mut figures = Vec::new();
    for (i, (name, script)) in shapes.iter().enumerate() {
        let (mut stopped, mut whole, mut headroom, mut took) = (0, 0, Vec::new(), Vec::new());
        for round in 1..=rounds {
            let (s, w, h, t) = collective_round(&format!("coll{i}"), script)?;
            eprintln!(
                "{name} round {round}/{rounds}: stopped {s}, whole {w}, headroom {h:?} MiB, {t:?} s"
            );
            stopped += usize::from(s);
            whole += usize::from(w);
            headroom.extend(h);
            took.extend(t);
        }
        println!(
            "| {name} | {stopped}/{rounds} | {whole}/{rounds} | {:.0} MiB | {:.1} s |",
            median(&mut headroom),
            median(&mut took)
        );
        figures.push(serde_json::json!({"shape": name, "stopped": stopped, "whole": whole,
            "rounds": rounds, "headroom_median_mib": median(&mut headroom), "act_median_secs": median(&mut took)}));
    }
    println!(
        "{}",
        serde_json::json!({"bench": "memory_collective", "target": "every round stopped, bystander alive", "shapes": figures})
    );
    Ok(())
}
