//! Memory runaway rule: a memory pool (a cgroup with a memory limit, or the
//! host) about to run out, and the process growing it.
//!
//! Usage that counts is what reclaim cannot take back without swap: anon +
//! shmem of the cgroup (`memory.stat`), or the host's MemTotal − MemAvailable.
//! Page cache does not count: the kernel reclaims it at the limit.
//!
//! - Horizon: the pool's usage has grown at every reading for at least
//!   `sustain` (a block allocated once and then held stops growing; a
//!   runaway does not) and, at its growth rate over that run of readings
//!   (least squares), reaches the limit within `horizon`.
//! - Headroom: usage passes `headroom` percent of the limit while growing.
//!   This is the fast path for a runaway too quick for the horizon rule.
//!
//! The offender is the process whose own resident memory (anon + shmem, from
//! the kernel's `rss` step records) grew the most over the window: the
//! runaway, not the largest process (a database's big steady heap has no
//! growth). One alert per pool per cool-down.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use crate::host::proctable::NodeId;

/// The pool key: a cgroup directory, or [`HOST`].
pub type PoolKey = Arc<str>;

/// The host's pool.
pub const HOST: &str = "host";

/// Fewest readings a growth rate is taken from.
pub const MIN_RUN_SAMPLES: usize = 3;

#[derive(Clone, Copy, Debug)]
pub struct MemoryRules {
    pub horizon_ns: u64,
    /// Percent of the limit.
    pub headroom_pct: f64,
    /// Window of each process's growth, and the cool-down between two
    /// alerts of one pool.
    pub window_ns: u64,
    /// How long usage must have grown at every reading for the horizon rule.
    pub sustain_ns: u64,
}

/// One reading of a pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemUsage {
    /// anon + shmem (cgroup), or MemTotal − MemAvailable (host).
    pub unreclaimable: u64,
    /// Everything charged, page cache included.
    pub usage: u64,
    pub limit: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryRule {
    Horizon,
    Headroom,
    /// The host stalls on memory (thrashing, with swap, before any limit
    /// or OOM kill): see [`MemoryDetector::host_pressure`].
    Pressure,
}

/// A process that grew in the pool, biggest growth first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grower {
    pub tgid: u32,
    pub node: NodeId,
    /// Growth of anon + shmem over the window.
    pub growth: u64,
    /// anon + shmem now.
    pub resident: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct MemoryVerdict {
    pub pool: PoolKey,
    pub rule: MemoryRule,
    pub usage: MemUsage,
    pub bytes_per_sec: f64,
    /// Time to the limit at that rate.
    pub eta_ns: Option<u64>,
    pub growers: Vec<Grower>,
}

struct Pool {
    samples: VecDeque<(u64, u64)>,
    last: Option<MemUsage>,
    alerted_ns: Option<u64>,
}

struct ProcMem {
    node: NodeId,
    pool: Option<PoolKey>,
    /// (time, anon + shmem) from rss records; the first entry is the
    /// baseline at or before the window's start.
    history: VecDeque<(u64, u64)>,
}

pub struct MemoryDetector {
    rules: MemoryRules,
    pools: HashMap<PoolKey, Pool>,
    procs: HashMap<u32, ProcMem>,
    /// (time, whether the host was under memory pressure then).
    pressure: VecDeque<(u64, bool)>,
}

impl MemoryDetector {
    pub fn new(rules: MemoryRules) -> Self {
        Self {
            rules,
            pools: HashMap::new(),
            procs: HashMap::new(),
            pressure: VecDeque::new(),
        }
    }

    /// Whether the host is under memory pressure now: tasks stall on memory
    /// (PSI `full`), or pages are swapped back in and refaulted as fast as
    /// they go out (see `pipeline`). With swap, a runaway makes the host
    /// thrash long before MemAvailable runs out: sustained for
    /// `sustain_ns`, that is a verdict on the host's pool.
    pub fn host_pressure(&mut self, now: u64, under: bool) {
        self.pressure.push_back((now, under));
        while self
            .pressure
            .front()
            .is_some_and(|&(t, _)| t + 2 * self.rules.sustain_ns < now)
        {
            self.pressure.pop_front();
        }
    }

    /// Pressure at every reading of the last `sustain_ns`, and readings
    /// that cover it.
    fn sustained_pressure(&self, now: u64) -> bool {
        let since = now.saturating_sub(self.rules.sustain_ns);
        let recent: Vec<bool> = self
            .pressure
            .iter()
            .filter(|&&(t, _)| t >= since)
            .map(|&(_, p)| p)
            .collect();
        let covered = self.pressure.front().is_some_and(|&(t, _)| t <= since);
        covered && recent.len() >= MIN_RUN_SAMPLES && recent.iter().all(|&p| p)
    }

    pub fn rules(&self) -> MemoryRules {
        self.rules
    }

    /// Pools seen so far (to sample).
    pub fn pools(&self) -> Vec<PoolKey> {
        self.pools.keys().cloned().collect()
    }

    /// When `pool` was last sampled.
    pub fn sampled_at(&self, pool: &str) -> Option<u64> {
        self.pools.get(pool)?.samples.back().map(|s| s.0)
    }

    /// A reading of `pool`.
    pub fn sample(&mut self, now: u64, pool: &PoolKey, usage: MemUsage) {
        let keep = self.rules.window_ns + self.rules.sustain_ns;
        let p = self.pools.entry(pool.clone()).or_insert_with(|| Pool {
            samples: VecDeque::new(),
            last: None,
            alerted_ns: None,
        });
        p.samples.push_back((now, usage.unreclaimable));
        p.last = Some(usage);
        while p.samples.len() > MIN_RUN_SAMPLES
            && p.samples
                .front()
                .is_some_and(|s| now.saturating_sub(s.0) > keep)
        {
            p.samples.pop_front();
        }
    }

    /// Forgets a pool that can no longer be read (its cgroup was removed):
    /// its last readings must not raise alerts.
    pub fn remove_pool(&mut self, pool: &str) {
        self.pools.remove(pool);
    }

    /// A process's anon + shmem from an `rss` record; `from_zero` when it
    /// grew out of the first step (its growth is then counted from 0 the
    /// first time it is seen).
    pub fn rss(
        &mut self,
        now: u64,
        tgid: u32,
        node: NodeId,
        pool: Option<PoolKey>,
        resident: u64,
        from_zero: bool,
    ) {
        if let Some(pool) = &pool {
            self.pools.entry(pool.clone()).or_insert_with(|| Pool {
                samples: VecDeque::new(),
                last: None,
                alerted_ns: None,
            });
        }
        let window = self.rules.window_ns;
        let p = self.procs.entry(tgid).or_insert_with(|| ProcMem {
            node,
            pool: pool.clone(),
            history: VecDeque::new(),
        });
        if p.node != node {
            // A reused pid: a new process.
            p.node = node;
            p.history.clear();
        }
        p.pool = pool;
        if from_zero && p.history.is_empty() {
            p.history.push_back((now, 0));
        }
        p.history.push_back((now, resident));
        // Keep one entry at or before the window's start as the baseline.
        while p.history.len() > 2 && p.history[1].0 + window <= now {
            p.history.pop_front();
        }
    }

    pub fn gone(&mut self, tgid: u32) {
        self.procs.remove(&tgid);
    }

    /// Each pool read: (pool, its last reading, seconds to the limit at
    /// the rate of its current growing run, when it grows). For metrics.
    pub fn pool_views(&self) -> Vec<(PoolKey, MemUsage, Option<f64>)> {
        self.pools
            .iter()
            .filter_map(|(key, pool)| {
                let usage = pool.last?;
                let samples: Vec<(u64, u64)> = pool.samples.iter().copied().collect();
                let rate = slope(growing_run(&samples));
                let eta = (rate > 0.0 && usage.limit > usage.unreclaimable)
                    .then(|| (usage.limit - usage.unreclaimable) as f64 / rate);
                Some((key.clone(), usage, eta))
            })
            .collect()
    }

    /// The pool's readings over its window: (boot ns, unreclaimable bytes),
    /// oldest first.
    pub fn samples(&self, pool: &str) -> Vec<(u64, u64)> {
        self.pools
            .get(pool)
            .map(|p| p.samples.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The pool's unreclaimable usage now.
    pub fn usage(&self, pool: &str) -> Option<MemUsage> {
        self.pools.get(pool)?.last
    }

    fn growers(&self, pool: &str, now: u64) -> Vec<Grower> {
        let window = self.rules.window_ns;
        let mut growers: Vec<Grower> = self
            .procs
            .iter()
            .filter(|(_, p)| pool == HOST || p.pool.as_deref() == Some(pool))
            .filter_map(|(&tgid, p)| {
                let &(_, resident) = p.history.back()?;
                let baseline = p
                    .history
                    .iter()
                    .take_while(|(at, _)| at + window <= now)
                    .last()
                    .or(p.history.front())
                    .map_or(0, |&(_, v)| v);
                Some(Grower {
                    tgid,
                    node: p.node,
                    growth: resident.saturating_sub(baseline),
                    resident,
                })
            })
            .filter(|g| g.growth > 0)
            .collect();
        growers.sort_by(|a, b| b.growth.cmp(&a.growth).then(a.tgid.cmp(&b.tgid)));
        growers
    }

    /// The memory runaway, for another detector (a blocked-task storm under
    /// memory pressure): the pool nearest its limit in which a process grew
    /// over the window, with its growers, biggest first.
    pub fn runaway(&self, now: u64) -> Option<(PoolKey, MemUsage, Vec<Grower>)> {
        self.pools
            .iter()
            .filter_map(|(key, pool)| {
                let usage = pool.last?;
                let growers = self.growers(key, now);
                (usage.limit > 0 && !growers.is_empty()).then(|| (key.clone(), usage, growers))
            })
            .max_by(|a, b| {
                let ratio = |u: &MemUsage| u.unreclaimable as f64 / u.limit as f64;
                ratio(&a.1).total_cmp(&ratio(&b.1)).then(b.0.cmp(&a.0))
            })
    }

    /// Pools whose usage is at or past the headroom line: (pool, percent).
    pub fn near_limit(&self) -> Vec<(PoolKey, f64)> {
        let mut near: Vec<(PoolKey, f64)> = self
            .pools
            .iter()
            .filter_map(|(key, pool)| {
                let usage = pool.last?;
                let pct = usage.unreclaimable as f64 * 100.0 / usage.limit.max(1) as f64;
                (pct >= self.rules.headroom_pct).then(|| (key.clone(), pct))
            })
            .collect();
        near.sort_by(|a, b| a.0.cmp(&b.0));
        near
    }

    /// Evaluates every pool.
    pub fn check(&mut self, now: u64) -> Vec<MemoryVerdict> {
        let rules = self.rules;
        let mut found = Vec::new();
        for (key, pool) in &self.pools {
            let Some(usage) = pool.last else { continue };
            if usage.limit == 0
                || pool
                    .alerted_ns
                    .is_some_and(|at| now.saturating_sub(at) < rules.window_ns)
            {
                continue;
            }
            let samples: Vec<(u64, u64)> = pool.samples.iter().copied().collect();
            let run = growing_run(&samples);
            let growing = run.len() >= 2;
            let sustained = run.len() >= MIN_RUN_SAMPLES
                && run[run.len() - 1].0.saturating_sub(run[0].0) >= rules.sustain_ns;
            let rate = slope(run);
            let left = usage.limit.saturating_sub(usage.unreclaimable);
            let eta_ns = (rate > 0.0).then(|| (left as f64 / rate * 1e9) as u64);
            let rule = if growing
                && usage.unreclaimable as f64 >= usage.limit as f64 * rules.headroom_pct / 100.0
            {
                Some(MemoryRule::Headroom)
            } else if sustained && eta_ns.is_some_and(|eta| eta <= rules.horizon_ns) {
                Some(MemoryRule::Horizon)
            } else if &**key == HOST && self.sustained_pressure(now) {
                Some(MemoryRule::Pressure)
            } else {
                None
            };
            if let Some(rule) = rule {
                found.push(MemoryVerdict {
                    pool: key.clone(),
                    rule,
                    usage,
                    bytes_per_sec: rate,
                    eta_ns,
                    growers: Vec::new(),
                });
            }
        }
        for verdict in &mut found {
            verdict.growers = self.growers(&verdict.pool, now);
            if let Some(pool) = self.pools.get_mut(&verdict.pool) {
                pool.alerted_ns = Some(now);
            }
        }
        found.sort_by(|a, b| a.pool.cmp(&b.pool));
        found
    }
}

/// The newest readings in which usage grew at every step.
pub fn growing_run(samples: &[(u64, u64)]) -> &[(u64, u64)] {
    let mut start = samples.len().saturating_sub(1);
    while start > 0 && samples[start].1 > samples[start - 1].1 {
        start -= 1;
    }
    &samples[start..]
}

/// Least-squares slope of (ns, bytes) samples, in bytes per second; 0 with
/// fewer than three samples or under 100 ms of them.
pub fn slope(samples: &[(u64, u64)]) -> f64 {
    if samples.len() < 3 {
        return 0.0;
    }
    let t0 = samples[0].0;
    let span = samples[samples.len() - 1].0.saturating_sub(t0);
    if span < 100_000_000 {
        return 0.0;
    }
    let n = samples.len() as f64;
    let xs: Vec<f64> = samples.iter().map(|s| (s.0 - t0) as f64 / 1e9).collect();
    let ys: Vec<f64> = samples.iter().map(|s| s.1 as f64).collect();
    let mx = xs.iter().sum::<f64>() / n;
    let my = ys.iter().sum::<f64>() / n;
    let sxy: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let sxx: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
    if sxx == 0.0 { 0.0 } else { sxy / sxx }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const NS: u64 = 1_000_000_000;
    const MIB: u64 = 1 << 20;

    fn rules() -> MemoryRules {
        MemoryRules {
            horizon_ns: 10_000 * MS,
            headroom_pct: 80.0,
            window_ns: 2_000 * MS,
            sustain_ns: 2_000 * MS,
        }
    }

    fn usage(unreclaimable: u64) -> MemUsage {
        MemUsage {
            unreclaimable,
            usage: unreclaimable + 50 * MIB,
            limit: 1024 * MIB,
        }
    }

    fn pool() -> PoolKey {
        Arc::from("/sys/fs/cgroup/memory/app")
    }

    #[test]
    fn the_growing_run_ends_at_the_last_flat_or_falling_reading() {
        let s = [(0, 5), (1, 5), (2, 6), (3, 8), (4, 9)];
        assert_eq!(growing_run(&s), &s[1..]);
        assert_eq!(growing_run(&s[..2]), &s[1..2]);
        assert!(growing_run(&[]).is_empty());
    }

    #[test]
    fn slope_of_a_steady_ramp() {
        let s: Vec<(u64, u64)> = (0..5).map(|i| (i * 250 * MS, i * 50 * MIB)).collect();
        assert!((slope(&s) - 200.0 * MIB as f64).abs() < 1.0);
        assert_eq!(slope(&s[..2]), 0.0);
    }

    #[test]
    fn a_sustained_runaway_is_flagged_with_its_eta_and_the_grower_first() {
        let mut d = MemoryDetector::new(rules());
        let p = pool();
        // A bystander holds 200 MiB from before the window; flat readings.
        d.rss(0, 10, 1, Some(p.clone()), 200 * MIB, true);
        d.sample(2_500 * MS, &p, usage(200 * MIB));
        d.sample(2_750 * MS, &p, usage(200 * MIB));
        // The runaway: 50 MiB per 250 ms reading, from 3 s.
        for i in 0..8u64 {
            let now = 3_000 * MS + i * 250 * MS;
            d.rss(now, 20, 2, Some(p.clone()), (i + 1) * 50 * MIB, i == 0);
            d.sample(now, &p, usage(200 * MIB + (i + 1) * 50 * MIB));
            let verdicts = d.check(now);
            // Sustained once the run from the last flat reading (2.75 s)
            // spans 2 s.
            if i < 7 {
                assert!(verdicts.is_empty(), "not sustained yet at sample {i}");
                continue;
            }
            assert_eq!(verdicts.len(), 1);
            let v = &verdicts[0];
            assert_eq!(v.rule, MemoryRule::Horizon);
            assert!((v.bytes_per_sec - 200.0 * MIB as f64).abs() < 1.0);
            // (1024 - 600) MiB at 200 MiB/s.
            assert_eq!(v.eta_ns.map(|e| e / MS), Some(2120));
            assert_eq!(v.growers[0].tgid, 20);
            // 400 MiB now, from 0 when it appeared 1.75 s before.
            assert_eq!(v.growers[0].growth, 400 * MIB);
            assert!(v.growers.iter().all(|g| g.tgid != 10), "no growth: {v:?}");
        }
        assert!(d.check(4_900 * MS).is_empty(), "cool-down");
    }

    #[test]
    fn a_block_allocated_once_then_held_is_not_flagged() {
        let mut d = MemoryDetector::new(rules());
        let p = pool();
        // 600 MiB allocated over 1.5 s, then held.
        let readings = [0, 100, 200, 300, 400, 500, 600, 600, 600, 600, 600, 600];
        for (i, mib) in readings.iter().enumerate() {
            let now = i as u64 * 250 * MS;
            d.sample(now, &p, usage(mib * MIB));
            assert!(d.check(now).is_empty(), "at sample {i}");
        }
    }

    #[test]
    fn passing_the_headroom_while_growing_is_flagged_at_once() {
        let mut d = MemoryDetector::new(rules());
        let p = pool();
        d.sample(0, &p, usage(500 * MIB));
        assert!(d.check(0).is_empty());
        d.sample(30 * MS, &p, usage(830 * MIB));
        let v = d.check(30 * MS);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].rule, MemoryRule::Headroom);
        // Held above the line, not growing: nothing more.
        let mut d = MemoryDetector::new(rules());
        d.sample(0, &p, usage(900 * MIB));
        d.sample(250 * MS, &p, usage(900 * MIB));
        assert!(d.check(250 * MS).is_empty());
    }

    #[test]
    fn the_runaway_is_in_the_pool_nearest_its_limit() {
        let mut d = MemoryDetector::new(rules());
        let (a, b) = (PoolKey::from("/a"), PoolKey::from("/b"));
        d.rss(0, 1, 1, Some(a.clone()), 64 * MIB, true);
        d.rss(0, 2, 2, Some(b.clone()), 128 * MIB, true);
        d.sample(0, &a, usage(300 * MIB));
        d.sample(0, &b, usage(900 * MIB));
        let (pool, u, growers) = d.runaway(100 * MS).expect("runaway");
        assert_eq!((pool.clone(), u.unreclaimable), (b.clone(), 900 * MIB));
        assert_eq!(growers[0].tgid, 2);
        assert_eq!(d.near_limit(), vec![(b, 900.0 * 100.0 / 1024.0)]);
    }

    #[test]
    fn a_removed_pool_raises_nothing_more() {
        let mut d = MemoryDetector::new(rules());
        let p = pool();
        d.sample(0, &p, usage(500 * MIB));
        d.sample(30 * MS, &p, usage(900 * MIB));
        d.remove_pool(&p);
        assert!(d.check(3_000 * MS).is_empty());
        assert!(d.pools().is_empty());
    }

    #[test]
    fn growth_is_counted_over_the_window_only() {
        let mut d = MemoryDetector::new(rules());
        let p = pool();
        d.rss(0, 7, 1, Some(p.clone()), 64 * MIB, true);
        d.rss(100 * MS, 7, 1, Some(p.clone()), 512 * MIB, false);
        // Long after: the old growth is outside the window.
        d.rss(5_000 * MS, 7, 1, Some(p.clone()), 576 * MIB, false);
        assert_eq!(d.growers(&p, 5_000 * MS)[0].growth, 64 * MIB);
        // A reused pid is a new process.
        d.rss(5_100 * MS, 7, 9, Some(p.clone()), 64 * MIB, true);
        assert_eq!(d.growers(&p, 5_100 * MS)[0].growth, 64 * MIB);
        d.gone(7);
        assert!(d.growers(&p, 5_100 * MS).is_empty());
    }

    #[test]
    fn a_thrashing_host_is_a_verdict_before_its_memory_runs_out() {
        let rules = MemoryRules {
            horizon_ns: 10 * NS,
            headroom_pct: 80.0,
            window_ns: 2 * NS,
            sustain_ns: 2 * NS,
        };
        let host = PoolKey::from(HOST);
        let usage = |u: u64| MemUsage {
            unreclaimable: u << 20,
            usage: u << 20,
            limit: 2048 << 20,
        };
        // With swap, MemTotal - MemAvailable sits at 60% while the host
        // thrashes: neither headroom nor horizon.
        let mut d = MemoryDetector::new(rules);
        let mut first = None;
        for i in 0..20u64 {
            let now = i * 250 * MS;
            d.sample(now, &host, usage(1200 + i % 2));
            d.host_pressure(now, i >= 4);
            if first.is_none() && !d.check(now).is_empty() {
                first = Some(now);
            }
        }
        let at = first.expect("a pressure verdict");
        assert!(
            (3 * NS..=4 * NS).contains(&at),
            "2 s of pressure from 1 s: {at}"
        );
        // Pressure that comes and goes is none.
        let mut d = MemoryDetector::new(rules);
        for i in 0..40u64 {
            let now = i * 250 * MS;
            d.sample(now, &host, usage(1200));
            d.host_pressure(now, i % 4 != 0);
            assert!(d.check(now).is_empty(), "at {i}");
        }
    }
}
