//! The agent's own CPU share, kept under `--cpu-limit`: guard must never
//! starve the host it guards. The incident it was built for ran on a
//! one-CPU host, where an agent at nice -20 working through a backlog of
//! events would take nearly all of the CPU.
//!
//! Pure: readings of the wall clock and of the agent's CPU time in, a
//! decision out. Over the limit, the agent first stops formatting event
//! stream lines (detection goes on, and the lines are counted as shed;
//! see `output::notable` for those never shed); still
//! over it a window later, it pauses between batches for as long as it
//! overspent, so events wait in the ring buffer (or are lost there, and
//! counted) rather than the host waiting for guard. Containment runs on a
//! thread of its own and is never paused; neither is the pipeline while an
//! action is under way or a cgroup is arming (a bomb is on).

use std::{collections::VecDeque, time::Duration};

/// What the agent does next.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Spend {
    /// Under the limit: everything as usual.
    Normal,
    /// Over it: event lines are not formatted.
    Shed,
    /// Over it even so: also pause this long before the next batch.
    Pause(Duration),
}

/// Longest single pause: signals and the sample tick wait at most this.
pub const MAX_PAUSE: Duration = Duration::from_millis(200);

pub struct CpuBudget {
    /// Share of one CPU, 0 < cap.
    cap: f64,
    window_ns: u64,
    /// (wall ns, agent CPU ns), oldest first, within the window.
    readings: VecDeque<(u64, u64)>,
    /// Since when the agent sheds (wall ns).
    shedding_since: Option<u64>,
}

impl CpuBudget {
    /// `cap`: share of one CPU (0.25 is a quarter of one); judged over
    /// `window_ns`.
    pub fn new(cap: f64, window_ns: u64) -> Self {
        Self {
            cap,
            window_ns,
            readings: VecDeque::new(),
            shedding_since: None,
        }
    }

    /// Whether event lines are being shed now.
    pub fn shedding(&self) -> bool {
        self.shedding_since.is_some()
    }

    /// A reading of the wall clock and of the agent's CPU time (both ns,
    /// monotonic); returns what to do next.
    pub fn observe(&mut self, wall_ns: u64, cpu_ns: u64) -> Spend {
        self.readings.push_back((wall_ns, cpu_ns));
        while self.readings.len() > 2
            && self
                .readings
                .get(1)
                .is_some_and(|&(t, _)| t + self.window_ns <= wall_ns)
        {
            self.readings.pop_front();
        }
        let Some(&(t0, c0)) = self.readings.front() else {
            return Spend::Normal;
        };
        let span = wall_ns.saturating_sub(t0);
        // Too short a span to judge a share (a burst of a few ms is fine).
        if span < self.window_ns / 4 {
            return self.current();
        }
        let used = cpu_ns.saturating_sub(c0) as f64;
        let allowed = self.cap * span as f64;
        if used <= 0.8 * allowed {
            self.shedding_since = None;
            return Spend::Normal;
        }
        if used <= allowed {
            return self.current();
        }
        let since = *self.shedding_since.get_or_insert(wall_ns);
        if wall_ns.saturating_sub(since) < self.window_ns {
            return Spend::Shed;
        }
        // Pausing `p` brings the share to the cap: used / (span + p) = cap.
        let pause_ns = (used - allowed) / self.cap;
        Spend::Pause(Duration::from_nanos(pause_ns as u64).min(MAX_PAUSE))
    }

    fn current(&self) -> Spend {
        if self.shedding() {
            Spend::Shed
        } else {
            Spend::Normal
        }
    }
}

/// The agent's CPU time so far (every thread), ns.
pub fn process_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes the process's CPU clock into `ts`, a valid timespec.
    if unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) } != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// Feeds readings every 10 ms of an agent using `share` of a CPU.
    fn run(
        budget: &mut CpuBudget,
        from_ms: u64,
        to_ms: u64,
        share: f64,
        cpu: &mut u64,
    ) -> Vec<Spend> {
        (from_ms..to_ms)
            .step_by(10)
            .map(|t| {
                *cpu += (10.0 * share * MS as f64) as u64;
                budget.observe(t * MS, *cpu)
            })
            .collect()
    }

    #[test]
    fn an_agent_under_its_limit_is_left_alone() {
        let mut b = CpuBudget::new(0.25, 1000 * MS);
        let mut cpu = 0;
        let spends = run(&mut b, 0, 5000, 0.2, &mut cpu);
        assert!(spends.iter().all(|s| *s == Spend::Normal), "{spends:?}");
    }

    #[test]
    fn over_its_limit_it_sheds_first_then_pauses_and_recovers() {
        let mut b = CpuBudget::new(0.25, 1000 * MS);
        let mut cpu = 0;
        // A backlog: the agent would use the whole CPU.
        let spends = run(&mut b, 0, 3000, 1.0, &mut cpu);
        let first_shed = spends
            .iter()
            .position(|s| *s == Spend::Shed)
            .expect("sheds");
        let first_pause = spends
            .iter()
            .position(|s| matches!(s, Spend::Pause(_)))
            .expect("pauses");
        // Judged once a quarter window has passed; a window of shedding
        // before the first pause.
        assert_eq!(first_shed, 25);
        assert_eq!(first_pause, 25 + 100);
        for s in &spends[first_pause..] {
            let Spend::Pause(p) = s else {
                panic!("{s:?} after pausing began");
            };
            assert!(*p > Duration::ZERO && *p <= MAX_PAUSE, "{p:?}");
        }
        // The backlog is gone: back to normal once the window's share is
        // under 80% of the limit.
        let spends = run(&mut b, 3000, 6000, 0.05, &mut cpu);
        let normal = spends
            .iter()
            .position(|s| *s == Spend::Normal)
            .expect("recovers");
        assert!(normal <= 100, "recovered after {normal} readings");
        assert!(!b.shedding());
    }

    #[test]
    fn a_short_burst_is_no_overspending() {
        let mut b = CpuBudget::new(0.25, 1000 * MS);
        let mut cpu = 0;
        run(&mut b, 0, 2000, 0.1, &mut cpu);
        // 50 ms at a full CPU: a window's share of 0.15.
        let spends = run(&mut b, 2000, 2050, 1.0, &mut cpu);
        assert!(spends.iter().all(|s| *s == Spend::Normal), "{spends:?}");
    }
}
