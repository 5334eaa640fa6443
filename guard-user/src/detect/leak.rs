//! The leak rule: a cgroup whose task count keeps rising for minutes and
//! never comes back down (the first incident: helpers +30 every 30 s to
//! 515). Pure: readings of `pids.current` and a clock in, verdicts out.
//!
//! **Rule.** Over `--leak-window` (default 600 s), split into
//! [`SLICES`] equal slices, the lowest count of each slice is higher than
//! the one before, and the last is at least `--leak-growth` (20) above the
//! first. A pool that starts its workers once, a build that comes and
//! goes, a service whose workers are recycled: each slice's lowest is not
//! above the one before, so none is a leak. One alert per window.

use std::collections::{HashMap, VecDeque};

use super::fork::CgroupKey;

const NS: u64 = 1_000_000_000;

/// Slices of the window whose lowest counts must rise one after another.
pub const SLICES: u64 = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeakRules {
    pub window_ns: u64,
    /// Tasks the lowest count must rise by over the window.
    pub growth: u32,
}

/// `--leak-window`'s default, in seconds.
pub const DEFAULT_WINDOW_SECS: u64 = 600;
/// `--leak-growth`'s default.
pub const DEFAULT_GROWTH: u32 = 20;

impl Default for LeakRules {
    fn default() -> Self {
        Self {
            window_ns: DEFAULT_WINDOW_SECS * NS,
            growth: DEFAULT_GROWTH,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct LeakVerdict {
    pub cgroup: CgroupKey,
    /// Tasks now, and at the window's start.
    pub now: u64,
    pub before: u64,
    pub window_ns: u64,
    /// The rise per minute, from the slices' lowest counts.
    pub per_min: f64,
    /// `pids.max`, when there is one.
    pub limit: Option<u64>,
}

#[derive(Default)]
struct Series {
    /// (time, tasks), at most one a second.
    readings: VecDeque<(u64, u64)>,
    limit: Option<u64>,
    alerted_ns: Option<u64>,
}

#[derive(Default)]
pub struct LeakDetector {
    rules: LeakRules,
    series: HashMap<CgroupKey, Series>,
}

impl LeakDetector {
    pub fn new(rules: LeakRules) -> Self {
        Self {
            rules,
            series: HashMap::new(),
        }
    }

    /// A reading of a cgroup's task count (and its limit, if any). Kept
    /// at most once a second.
    pub fn sample(&mut self, now: u64, cgroup: &CgroupKey, tasks: u64, limit: Option<u64>) {
        let s = self.series.entry(cgroup.clone()).or_default();
        s.limit = limit;
        if s.readings.back().is_some_and(|&(t, _)| now < t + NS) {
            return;
        }
        s.readings.push_back((now, tasks));
        while s
            .readings
            .front()
            .is_some_and(|&(t, _)| t + self.rules.window_ns < now)
        {
            s.readings.pop_front();
        }
    }

    pub fn check(&mut self, now: u64) -> Vec<LeakVerdict> {
        let rules = self.rules;
        // A cgroup no longer read (emptied, or removed: transient scopes
        // come and go) for a whole window is forgotten.
        self.series.retain(|_, s| {
            s.readings
                .back()
                .is_some_and(|&(t, _)| t + rules.window_ns >= now)
        });
        let mut verdicts = Vec::new();
        for (cgroup, s) in &mut self.series {
            let Some(&(first, _)) = s.readings.front() else {
                continue;
            };
            // The whole window must be covered (a second's slack).
            if now.saturating_sub(first) + NS < rules.window_ns {
                continue;
            }
            if s.alerted_ns.is_some_and(|t| now < t + rules.window_ns) {
                continue;
            }
            let start = now.saturating_sub(rules.window_ns);
            let slice = (rules.window_ns / SLICES).max(1);
            let mut lows = [u64::MAX; SLICES as usize];
            for &(t, tasks) in &s.readings {
                let i = (t.saturating_sub(start) / slice).min(SLICES - 1) as usize;
                lows[i] = lows[i].min(tasks);
            }
            let rising = lows.windows(2).all(|w| w[0] != u64::MAX && w[1] > w[0]);
            let rise = lows[SLICES as usize - 1].saturating_sub(lows[0]);
            if !rising || rise < u64::from(rules.growth) {
                continue;
            }
            s.alerted_ns = Some(now);
            let minutes = (rules.window_ns - slice) as f64 / (60.0 * NS as f64);
            verdicts.push(LeakVerdict {
                cgroup: cgroup.clone(),
                now: s.readings.back().map_or(0, |&(_, n)| n),
                before: s.readings.front().map_or(0, |&(_, n)| n),
                window_ns: rules.window_ns,
                per_min: rise as f64 / minutes.max(1e-9),
                limit: s.limit,
            });
        }
        verdicts
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn run(d: &mut LeakDetector, secs: u64, tasks: impl Fn(u64) -> u64) -> Vec<LeakVerdict> {
        let cg: CgroupKey = Arc::from("/svc");
        let mut out = Vec::new();
        for s in 0..=secs {
            d.sample(s * NS, &cg, tasks(s), Some(2000));
            out.extend(d.check(s * NS));
        }
        out
    }

    #[test]
    fn helpers_rising_30_every_30_seconds_are_a_leak_within_the_window() {
        let mut d = LeakDetector::new(LeakRules::default());
        // The first incident's shape: +30 every 30 s, from 100.
        let verdicts = run(&mut d, 900, |s| 100 + s / 30 * 30);
        let v = verdicts.first().expect("a leak");
        assert_eq!(
            verdicts.len(),
            1,
            "one per window (the next is due at 1200 s)"
        );
        assert_eq!(v.before, 100);
        assert!((640..=700).contains(&v.now), "{v:?}");
        assert!((50.0..=70.0).contains(&v.per_min), "{v:?}");
        assert_eq!(v.limit, Some(2000));
    }

    #[test]
    fn plateaus_churn_and_short_bursts_are_no_leak() {
        // A pool started once, then steady.
        let mut d = LeakDetector::new(LeakRules::default());
        assert!(run(&mut d, 1200, |s| if s < 10 { 10 } else { 210 }).is_empty());
        // Workers recycled: up and down every minute, the trend flat.
        let mut d = LeakDetector::new(LeakRules::default());
        assert!(run(&mut d, 1200, |s| 100 + (s % 60)).is_empty());
        // A build: up by hundreds for two minutes, then back down.
        let mut d = LeakDetector::new(LeakRules::default());
        assert!(
            run(&mut d, 1200, |s| if (300..420).contains(&s) {
                500
            } else {
                20
            })
            .is_empty()
        );
        // Rising, but by less than --leak-growth.
        let mut d = LeakDetector::new(LeakRules::default());
        assert!(run(&mut d, 1200, |s| 50 + s / 120).is_empty());
    }

    #[test]
    fn cgroups_no_longer_read_are_forgotten() {
        let mut d = LeakDetector::new(LeakRules::default());
        for i in 0..1000u32 {
            let cg: CgroupKey = Arc::from(format!("/run-{i}.scope").as_str());
            d.sample(u64::from(i) * NS, &cg, 3, None);
        }
        d.check(1000 * NS);
        assert_eq!(d.series.len(), 600, "the last window's cgroups are kept");
        d.check(3000 * NS);
        assert!(d.series.is_empty());
    }

    #[test]
    fn a_short_window_for_tests_and_impatient_operators() {
        let mut d = LeakDetector::new(LeakRules {
            window_ns: 10 * NS,
            growth: 10,
        });
        let verdicts = run(&mut d, 12, |s| 5 + 2 * s);
        assert_eq!(verdicts.len(), 1, "{verdicts:?}");
        assert!(verdicts[0].now >= 20, "{verdicts:?}");
    }
}
