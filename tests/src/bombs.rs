//! One round of a fork bomb under the agent, measured from the kernel's own
//! count: `cargo xtask bench --only bombs` runs it on this machine for
//! bash, dash, perl, Python and a thread bomb, and `guard-vmcheck bench` in
//! a Debian guest, where the kernel refuses forks (so `kill` refuses first)
//! and `--no-lsm` shows the same kill without it.
//!
//! A sampler thread reads `pids.current` (threads and zombies included)
//! every half millisecond (at SCHED_FIFO priority, so that the bomb does
//! not starve it), stamped with CLOCK_BOOTTIME, the clock of the agent's
//! records, so the count at the fork probe's condemnation (the
//! `condemned` record) and after it can be read off the same timeline.

use std::{
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use crate::{Agent, TestCgroup};

/// A bomb: its name and the command that starts it.
#[derive(Clone, Debug)]
pub struct Shape {
    pub name: &'static str,
    pub argv: Vec<String>,
}

impl Shape {
    pub fn new(name: &'static str, argv: &[&str]) -> Self {
        Self {
            name,
            argv: argv.iter().map(|s| (*s).to_owned()).collect(),
        }
    }
}

/// The five bombs of the bench, as a user would type them: bash and dash
/// `b|b&` bombs, perl's `fork while fork`, a Python fork loop that ignores
/// failed forks, and a thread bomb (`guard-workload threadbomb` at
/// `workload`). The interpreters are Debian's, at their Debian paths (the
/// guest bench gets this machine's copies).
pub fn five_bombs(workload: &str) -> Vec<Shape> {
    vec![
        Shape::new("bash", &["/usr/bin/bash", "-c", ":(){ :|:& };:"]),
        Shape::new("dash", &["/usr/bin/dash", "-c", "b(){ b|b& };b"]),
        Shape::new("perl", &["/usr/bin/perl", "-e", "fork while fork"]),
        Shape::new(
            "python",
            &[
                "/usr/bin/python3",
                "-c",
                "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
            ],
        ),
        Shape::new("threads", &[workload, "threadbomb"]),
    ]
}

/// What one round measured.
#[derive(Clone, Debug)]
pub struct Round {
    pub shape: &'static str,
    pub action: String,
    /// Highest pids.current from the bomb's start to its end (or, under
    /// `refuse`, to a second after the refusal).
    pub peak: u64,
    /// pids.current at the fork probe's condemnation, and 20 ms after it.
    pub at_verdict: Option<u64>,
    pub at_verdict_20ms: Option<u64>,
    /// Highest pids.current from 20 ms after the condemnation to the end.
    pub peak_after_20ms: Option<u64>,
    /// Forks pids.max refused (`max` in pids.events).
    pub refused_by_limit: u64,
    /// Forks the kernel refused to the bomb (the action's outcome).
    pub refused_forks: Option<u64>,
    /// Births after the refusal was written: forks already past the
    /// kernel's hook (`outcome.slipped_forks` at the action's end, or the
    /// last `refusal` record's `slipped`, whichever is later).
    pub slipped_forks: Option<u64>,
    /// From the bomb's start to no member left alive (`kill`), in ms.
    pub gone_ms: Option<f64>,
    /// Under `refuse`: the bomb's members still alive (not zombies) a
    /// second after the refusal, before the round kills them.
    pub alive_refused: Option<u64>,
}

fn boot_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass and nothing else.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Runs `shape` in a cgroup of its own (pids.max `pids_max`) under the agent
/// with `--fork-action action` and `extra` flags, and measures it.
pub fn round(shape: &Shape, action: &str, extra: &[&str], pids_max: u32, name: &str) -> Round {
    let cg = TestCgroup::new(name, pids_max, 1 << 30);
    let scope = cg.pids_dir().to_string_lossy().into_owned();
    let mut args = vec![
        "--cgroup",
        scope.as_str(),
        "--fork-action",
        action,
        "--events",
        "condemned",
    ];
    args.extend_from_slice(extra);
    let mut agent = Agent::start(&args);
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        let file = cg.pids_dir().join("pids.current");
        std::thread::spawn(move || {
            // Above the bomb's processes (best effort): among a few hundred
            // busy forkers on two CPUs, a sampler at normal priority waits
            // tens of milliseconds for a turn.
            // SAFETY: sched_param is plain C data (musl's has more fields
            // than glibc's), valid all zero.
            let mut param: libc::sched_param = unsafe { std::mem::zeroed() };
            param.sched_priority = 10;
            // SAFETY: sets this thread's own policy from a valid parameter.
            let _ = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
            let mut samples = Vec::with_capacity(1 << 16);
            while !stop.load(Ordering::Relaxed) {
                let before = boot_ns();
                let count = std::fs::read_to_string(&file)
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok());
                let after = boot_ns();
                // A reading is kept only if it is pinned to its time: one
                // preempted between the read and the clock would be stamped
                // later than the count it holds.
                if let Some(n) = count
                    && after - before < 1_000_000
                {
                    samples.push((after, n));
                }
                std::thread::sleep(Duration::from_micros(500));
            }
            samples
        })
    };
    let started = Instant::now();
    let mut bomb = cg
        .command(&shape.argv[0])
        .args(&shape.argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {:?}: {e}", shape.argv));
    let refusing = action.starts_with("refuse");
    let verdict = agent.try_wait_for(Duration::from_secs(30), |r| {
        r["kind"] == "action"
            && r["detector"] == "fork"
            && (r["outcome"]["contained"] == true || r["outcome"]["refusing"] == true)
    });
    let mut gone_ms = None;
    if refusing {
        std::thread::sleep(Duration::from_secs(1));
    } else {
        // Until no member is left alive: zombies wait for whoever reaps
        // orphans (a guest's PID 1 is a shell that may not), and are in the
        // peak already.
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if cg.members().iter().all(|m| m.2 == 'Z') {
                gone_ms = Some(started.elapsed().as_secs_f64() * 1e3);
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    stop.store(true, Ordering::Relaxed);
    let samples = sampler.join().unwrap_or_default();
    let alive_refused = refusing.then(|| cg.members().iter().filter(|m| m.2 != 'Z').count() as u64);
    let refused_by_limit = cg.pids_refused();
    cg.kill_all();
    let _ = bomb.wait();
    let stopped = agent.stop();
    let condemned = stopped
        .of_kind("condemned")
        .next()
        .and_then(|r| r["boot_ns"].as_u64());
    let count_at = |t: u64| samples.iter().find(|s| s.0 >= t).map(|s| s.1);
    let at_verdict = condemned.and_then(count_at);
    let later = condemned.map(|t| t + 20_000_000);
    let at_verdict_20ms = later.and_then(count_at);
    let peak_after_20ms =
        later.and_then(|t| samples.iter().filter(|s| s.0 >= t).map(|s| s.1).max());
    Round {
        shape: shape.name,
        action: action.to_owned(),
        peak: samples.iter().map(|s| s.1).max().unwrap_or(0),
        at_verdict,
        at_verdict_20ms,
        peak_after_20ms,
        refused_by_limit,
        refused_forks: verdict
            .as_ref()
            .and_then(|v| v["outcome"]["refused_forks"].as_u64()),
        slipped_forks: verdict
            .as_ref()
            .and_then(|v| v["outcome"]["slipped_forks"].as_u64())
            .into_iter()
            .chain(
                stopped
                    .of_kind("refusal")
                    .filter_map(|r| r["slipped"].as_u64()),
            )
            .max(),
        gone_ms,
        alive_refused,
    }
}

impl Round {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "shape": self.shape,
            "action": self.action,
            "peak": self.peak,
            "at_verdict": self.at_verdict,
            "at_verdict_20ms": self.at_verdict_20ms,
            "peak_after_20ms": self.peak_after_20ms,
            "refused_by_limit": self.refused_by_limit,
            "refused_forks": self.refused_forks,
            "slipped_forks": self.slipped_forks,
            "gone_ms": self.gone_ms,
            "alive_refused": self.alive_refused,
        })
    }
}

/// Median and worst of `values`.
pub fn median_worst(values: &mut [f64]) -> (f64, f64) {
    if values.is_empty() {
        return (0.0, 0.0);
    }
    values.sort_by(f64::total_cmp);
    (values[values.len() / 2], values[values.len() - 1])
}
