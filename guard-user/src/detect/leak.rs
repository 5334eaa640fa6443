//! The leak rule: a cgroup whose task count keeps rising for minutes with
//! no plateau (the first incident: helpers +30 every 30 s to 515). Pure:
//! readings of `pids.current` and a clock in, verdicts out.
//!
//! **Rule.** Over a window split into [`SLICES`] equal slices, the lowest
//! count of each slice is higher than the one before, the last is at least
//! `--leak-growth` (20) above the first, and the count is **still rising**:
//! the latest reading is above the lowest of the last third of a slice (a
//! plateau, however short, means "not now"). A pool that starts its workers
//! once, a build that comes and goes, a service whose workers are recycled:
//! some slice's lowest is not above the one before, so none is a leak.
//!
//! **Windows.** The first window is [`FIRST_WINDOW_SECS`] (3 minutes):
//! growth of a task every 9 s or faster meets the rule there, so a leak of
//! 1 to 2 a second is named 150 to 180 s after it starts. Slower growth
//! needs longer windows to rise by `--leak-growth`: each next window is
//! twice the last, up to `--leak-window` (default 600 s). The first window
//! may start before the series: a cgroup seen from its birth needs five of
//! its six slices. One alert per cgroup and `--leak-window`.
//!
//! **Trade-off.** A legitimate ramp that keeps rising for 150 s or more
//! (a pool scaling to thousands, one worker a second) reads as a leak until
//! it levels off; one that levels off sooner (200 workers over two minutes)
//! never does.

use std::collections::{HashMap, VecDeque};

use super::fork::CgroupKey;

const NS: u64 = 1_000_000_000;

/// Slices of a window whose lowest counts must rise one after another.
pub const SLICES: u64 = 6;

/// The first (shortest) window, in seconds.
pub const FIRST_WINDOW_SECS: u64 = 180;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeakRules {
    /// The longest window.
    pub window_ns: u64,
    /// Tasks the lowest count must rise by over a window.
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

impl LeakRules {
    /// The windows, shortest first: 3 minutes, doubling up to the longest
    /// (just the longest when it is shorter than 3 minutes).
    pub fn windows(&self) -> Vec<u64> {
        let mut windows = Vec::new();
        let mut w = (FIRST_WINDOW_SECS * NS).min(self.window_ns);
        while w < self.window_ns {
            windows.push(w);
            w *= 2;
        }
        windows.push(self.window_ns);
        windows
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct LeakVerdict {
    pub cgroup: CgroupKey,
    /// Tasks now, and at the window's start.
    pub now: u64,
    pub before: u64,
    /// The window that met the rule.
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
    windows: Vec<u64>,
    series: HashMap<CgroupKey, Series>,
}

impl LeakDetector {
    pub fn rules(&self) -> LeakRules {
        self.rules
    }

    pub fn new(rules: LeakRules) -> Self {
        Self {
            rules,
            windows: rules.windows(),
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
            if s.alerted_ns.is_some_and(|t| now < t + rules.window_ns) {
                continue;
            }
            let Some(verdict) = self
                .windows
                .iter()
                .find_map(|&w| rising((cgroup, s.limit), &s.readings, now, w, rules.growth))
            else {
                continue;
            };
            s.alerted_ns = Some(now);
            verdicts.push(verdict);
        }
        verdicts
    }
}

/// The least-squares slope of `readings`, in tasks a nanosecond: the rate
/// over every reading, not two that a passing burst may have lifted.
fn slope<'a>(readings: impl Iterator<Item = &'a (u64, u64)> + Clone) -> f64 {
    let n = readings.clone().count() as f64;
    let Some(&(t0, _)) = readings.clone().next() else {
        return 0.0;
    };
    let (mut sx, mut sy, mut sxx, mut sxy) = (0.0, 0.0, 0.0, 0.0);
    for &(t, y) in readings {
        let (x, y) = ((t - t0) as f64, y as f64);
        sx += x;
        sy += y;
        sxx += x * x;
        sxy += x * y;
    }
    let d = n * sxx - sx * sx;
    if d <= 0.0 {
        0.0
    } else {
        (n * sxy - sx * sy) / d
    }
}

/// Whether `cgroup`'s `readings` meet the rule over the window of `window`
/// ending at `now`.
fn rising(
    (cgroup, limit): (&CgroupKey, Option<u64>),
    readings: &VecDeque<(u64, u64)>,
    now: u64,
    window: u64,
    growth: u32,
) -> Option<LeakVerdict> {
    let &(first, _) = readings.front()?;
    let &(_, latest) = readings.back()?;
    let slice = (window / SLICES).max(1);
    // The first slice may be partial (a second's slack for the tick).
    // Times are offsets into the window: `t + window - now`.
    if first + window > now + slice + NS {
        return None;
    }
    // Still rising: read from the newest back, so a flat series (most of
    // them, every tick) costs a few readings, not the window.
    let recent = (slice / 3).max(2 * NS);
    let recent_low = readings
        .iter()
        .rev()
        .take_while(|&&(t, _)| t + recent >= now)
        .map(|&(_, tasks)| tasks)
        .min()?;
    if latest <= recent_low {
        return None;
    }
    // Readings are in time order: the window is a tail of them.
    let in_window = readings.range(readings.partition_point(|&(t, _)| t + window < now)..);
    let mut lows = [u64::MAX; SLICES as usize];
    for &(t, tasks) in in_window.clone() {
        let i = ((t + window - now) / slice).min(SLICES - 1) as usize;
        lows[i] = lows[i].min(tasks);
    }
    let climbing = lows.windows(2).all(|w| w[0] != u64::MAX && w[1] > w[0]);
    let rise = lows[SLICES as usize - 1].saturating_sub(lows[0]);
    if !climbing || rise < u64::from(growth) {
        return None;
    }
    Some(LeakVerdict {
        cgroup: cgroup.clone(),
        now: latest,
        before: in_window.clone().next().map_or(0, |&(_, tasks)| tasks),
        window_ns: window,
        per_min: slope(in_window) * 60.0 * NS as f64,
        limit,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// Readings every second from `from` to `to` (seconds); the verdicts
    /// with the second each came at.
    fn run_from(
        d: &mut LeakDetector,
        (from, to): (u64, u64),
        tasks: impl Fn(u64) -> u64,
    ) -> Vec<(u64, LeakVerdict)> {
        let cg: CgroupKey = Arc::from("/svc");
        let mut out = Vec::new();
        for s in from..=to {
            d.sample(s * NS, &cg, tasks(s), None);
            out.extend(d.check(s * NS).into_iter().map(|v| (s, v)));
        }
        out
    }

    fn run(d: &mut LeakDetector, secs: u64, tasks: impl Fn(u64) -> u64) -> Vec<(u64, LeakVerdict)> {
        run_from(d, (0, secs), tasks)
    }

    #[test]
    fn windows_double_from_three_minutes_to_the_longest() {
        let w = |secs| {
            LeakRules {
                window_ns: secs * NS,
                growth: 20,
            }
            .windows()
        };
        assert_eq!(w(600), [180 * NS, 360 * NS, 600 * NS]);
        assert_eq!(w(180), [180 * NS]);
        assert_eq!(w(10), [10 * NS]);
        assert_eq!(
            w(3600),
            [
                180 * NS,
                360 * NS,
                720 * NS,
                1440 * NS,
                2880 * NS,
                3600 * NS
            ]
        );
    }

    /// One and two tasks a second, no limit, in a cgroup seen from its
    /// birth and in one that ran steady for an hour first: named within
    /// 3 minutes of the start, with the rate.
    #[test]
    fn a_leak_of_one_or_two_a_second_is_named_within_three_minutes() {
        for per_sec in [1, 2] {
            for quiet_before in [0, 3600] {
                let mut d = LeakDetector::new(LeakRules::default());
                let start = quiet_before;
                let v = run_from(&mut d, (0, start + 600), |s| {
                    5 + per_sec * s.saturating_sub(start)
                });
                let (at, first) = v.first().expect("a leak");
                let took = at - start;
                assert!(
                    (120..=180).contains(&took),
                    "{per_sec}/s after {quiet_before} s: {took} s"
                );
                let rate = first.per_min / 60.0;
                assert!(
                    (per_sec as f64 * 0.8..=per_sec as f64 * 1.25).contains(&rate),
                    "{first:?}"
                );
                assert_eq!(first.window_ns, 180 * NS);
                assert_eq!(v.len(), 1, "one alert per --leak-window");
            }
        }
    }

    #[test]
    fn helpers_rising_30_every_30_seconds_are_a_leak_within_minutes() {
        let mut d = LeakDetector::new(LeakRules::default());
        // The first incident's shape: +30 every 30 s, from 100.
        let verdicts = run(&mut d, 900, |s| 100 + s / 30 * 30);
        let (at, v) = verdicts.first().expect("a leak");
        assert!(*at <= 210, "at {at} s");
        assert_eq!(verdicts.len(), 2, "one per --leak-window");
        assert!((200..=400).contains(&v.now), "{v:?}");
        assert!((50.0..=70.0).contains(&v.per_min), "{v:?}");
    }

    /// Slower leaks take the longer windows: a task every 20 s rises by
    /// 20 only over 360 s or more.
    #[test]
    fn slower_growth_is_named_over_a_longer_window() {
        let mut d = LeakDetector::new(LeakRules::default());
        let v = run(&mut d, 1200, |s| 10 + s / 15);
        let (at, first) = v.first().expect("a leak");
        assert_eq!(first.window_ns, 360 * NS, "{first:?}");
        assert!((300..=400).contains(at), "at {at}");
        let mut d = LeakDetector::new(LeakRules::default());
        // a task every 40 s: 15 in 600 s, less than --leak-growth
        assert!(run(&mut d, 1800, |s| 10 + s / 40).is_empty());
    }

    /// Tasks at each second.
    type Shape = Box<dyn Fn(u64) -> u64>;

    #[test]
    fn plateaus_churn_ramps_and_short_bursts_are_no_leak() {
        let shapes: [(&str, Shape); 6] = [
            (
                "a pool started once",
                Box::new(|s| if s < 10 { 10 } else { 210 }),
            ),
            (
                "workers recycled every minute",
                Box::new(|s| 100 + (s % 60)),
            ),
            (
                "a build: hundreds for two minutes",
                Box::new(|s| if (300..420).contains(&s) { 500 } else { 20 }),
            ),
            (
                "rising by less than --leak-growth",
                Box::new(|s| 50 + s / 120),
            ),
            // 200 workers over 2 minutes, then steady; and 300 over 140 s.
            (
                "a ramp to 200 over 120 s",
                Box::new(|s| 10 + (s.saturating_sub(1000) * 200 / 120).min(200)),
            ),
            (
                "a ramp to 300 over 140 s",
                Box::new(|s| 10 + (s.saturating_sub(1000) * 300 / 140).min(300)),
            ),
        ];
        for (what, tasks) in shapes {
            let mut d = LeakDetector::new(LeakRules::default());
            let v = run(&mut d, 1800, tasks);
            assert!(v.is_empty(), "{what}: {v:?}");
        }
        // The same ramps seen from the cgroup's birth.
        for (to, secs) in [(200, 120), (300, 140)] {
            let mut d = LeakDetector::new(LeakRules::default());
            let v = run(&mut d, 1200, |s| 1 + (s * to / secs).min(to));
            assert!(v.is_empty(), "to {to} over {secs}: {v:?}");
        }
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
        assert!(verdicts[0].1.now >= 20, "{verdicts:?}");
    }
}
