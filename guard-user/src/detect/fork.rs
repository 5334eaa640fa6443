//! The fork detector: process explosions and pids limits about to be hit.
//! Pure: events, observations and a clock in, verdicts out; no I/O.
//!
//! **Explosion.** Per cgroup, over a sliding window (`--fork-window`,
//! default 1 s): at least `--fork-rate` × window process births *and* a live
//! process count that grew by at least `--fork-growth` (default 32) from its
//! lowest point in the window. Both must hold: a build or a test runner that
//! starts hundreds of short-lived processes a second (births, no growth) does
//! not trigger, nor does a service starting its worker pool once (growth,
//! too few births). A bash fork bomb meets both within tens of milliseconds.
//!
//! **Limit trend.** Per cgroup with a pids limit, from samples of the task
//! count (`pids.current`) and the limit (`pids.max`; "max" means none, and
//! the host's pid_max then stands in): the growth rate is fitted over the
//! last `TREND_WINDOW`, and when the projected time to the limit falls under
//! `--pids-horizon` (default 30 s) an alert names it. This catches the slow
//! leak (+30 processes every 30 s toward a few hundred) that never bursts.
//!
//! **Offender.** The topmost ancestor, by fork-time lineage, of the recent
//! births that is not protected: walking up from each birth, the last node
//! before a protected one (PID 1, a kernel thread, guard or its ancestors,
//! outside the scope, `--protect`). The most common answer wins.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use guard_common::fork_rule;

use crate::host::proctable::{Lineage, LineageNode, NodeId};

const NS: u64 = 1_000_000_000;

/// Samples of the limit trend kept and fitted.
pub const TREND_WINDOW_NS: u64 = 20 * NS;
/// The trend needs this much history before it projects anything.
pub const TREND_MIN_SPAN_NS: u64 = 3 * NS;
/// One alert per cgroup and rule at most this often.
pub const REALERT_NS: u64 = 10 * NS;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ForkRules {
    pub window_ns: u64,
    /// Births per second, averaged over the window.
    pub rate: f64,
    pub growth: u32,
    /// Self-replication depth at least one birth of the window must have.
    pub depth: u32,
    pub horizon_ns: u64,
}

/// The explosion rule's self-replication depth, by default (see
/// `guard_common::fork_rule`).
pub const DEFAULT_DEPTH: u32 = fork_rule::DEFAULT_DEPTH;

impl ForkRules {
    /// Births the window must hold: the rate times the window.
    pub fn min_births(&self) -> usize {
        fork_rule::min_births(self.rate, self.window_ns) as usize
    }
}

impl Default for ForkRules {
    fn default() -> Self {
        Self {
            window_ns: fork_rule::DEFAULT_WINDOW_MS * 1_000_000,
            rate: fork_rule::DEFAULT_RATE,
            growth: fork_rule::DEFAULT_GROWTH,
            depth: fork_rule::DEFAULT_DEPTH,
            horizon_ns: fork_rule::DEFAULT_HORIZON_SECS * NS,
        }
    }
}

/// A cgroup, named by its directory.
pub type CgroupKey = Arc<str>;

#[derive(Clone, Debug, PartialEq)]
pub enum ForkVerdict {
    Explosion {
        cgroup: CgroupKey,
        births: u32,
        births_per_sec: f64,
        growth: u32,
        /// Births of the window at least `depth` deep: self-copies.
        deep_births: u32,
        live: u32,
        window_ns: u64,
        /// Lineage nodes of the most recent births, newest first.
        recent: Vec<NodeId>,
    },
    /// A cgroup's task count projected to its pids.max.
    Limit {
        rule: LimitRule,
        cgroup: CgroupKey,
        current: u64,
        limit: u64,
        per_sec: f64,
        eta_ns: u64,
        /// Lineage nodes of the cgroup's last births, newest first.
        recent: Vec<NodeId>,
    },
}

/// A cgroup's pids as last read.
#[derive(Clone, Debug, PartialEq)]
pub struct PidsView {
    pub cgroup: CgroupKey,
    pub current: u64,
    pub limit: Option<u64>,
    /// Growth per second over the trend window.
    pub per_sec: f64,
    /// Seconds to the limit at that rate, when it grows toward one.
    pub eta_secs: Option<f64>,
}

/// Which projection toward pids.max a [`ForkVerdict::Limit`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitRule {
    /// pids.current's slope over 20 s reaches the limit within
    /// `--pids-horizon`.
    Trend,
    /// Growth without pause that, at its rate, reaches the limit within one
    /// window (see `Population::rush`). Judged on the agent's event counts.
    Rush,
}

/// The rush rule: births in each of the last [`RUSH_SLICES`] slices of
/// this length, back from the newest birth.
pub const RUSH_SLICE_NS: u64 = 50_000_000;
pub const RUSH_SLICES: u64 = 4;

/// Births remembered per cgroup, whatever their age, to name the offender
/// of a slow trend.
const RECENT_BIRTHS: usize = 64;

/// A cgroup's task count after each change within the window, with its
/// running minimum, so that every question the rules ask of it costs
/// O(log n) however fast it changes. (Scanning the history at every check
/// cost a fork loop's agent most of its CPU: 14,000 changes a second,
/// checked after every batch of events.)
#[derive(Default)]
struct Levels {
    /// (time, live) after each change, oldest first.
    history: VecDeque<(u64, u32)>,
    /// The monotonic minimum queue of `history`: (sequence, time, live),
    /// increasing in time and in live. The minimum of any suffix of
    /// `history` is the first entry here at or after the suffix's start.
    lows: VecDeque<(u64, u64, u32)>,
    /// Sequence number of `history`'s front.
    front_seq: u64,
}

impl Levels {
    fn push(&mut self, now: u64, live: u32) {
        let seq = self.front_seq + self.history.len() as u64;
        self.history.push_back((now, live));
        while self.lows.back().is_some_and(|&(_, _, l)| l >= live) {
            self.lows.pop_back();
        }
        self.lows.push_back((seq, now, live));
    }

    fn pop_front(&mut self) {
        if self.history.pop_front().is_some() {
            if self
                .lows
                .front()
                .is_some_and(|&(s, _, _)| s == self.front_seq)
            {
                self.lows.pop_front();
            }
            self.front_seq += 1;
        }
    }

    /// Drops changes before `horizon`, keeping the last of them: the level
    /// the window started at.
    fn prune(&mut self, horizon: u64) {
        while self.history.len() > 1 && self.history.get(1).is_some_and(|&(t, _)| t < horizon) {
            self.pop_front();
        }
    }

    fn clear(&mut self) {
        while !self.history.is_empty() {
            self.pop_front();
        }
    }

    fn len(&self) -> usize {
        self.history.len()
    }

    /// The lowest level kept.
    fn min(&self) -> Option<u32> {
        self.lows.front().map(|&(_, _, l)| l)
    }

    /// The level at `t`: the last change at or before it.
    fn at(&self, t: u64) -> Option<u32> {
        let after = self.history.partition_point(|&(when, _)| when <= t);
        after.checked_sub(1).map(|i| self.history[i].1)
    }

    /// The lowest level from `t` on: the level at `t` and every change
    /// after it.
    fn min_from(&self, t: u64) -> Option<u32> {
        let j = self.lows.partition_point(|&(_, when, _)| when <= t);
        let later = self.lows.get(j).map(|&(_, _, l)| l);
        match (self.at(t), later) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[derive(Default)]
struct Population {
    /// (time, node, self-copy: at least the rules' depth deep) of births
    /// within the window.
    births: VecDeque<(u64, NodeId, bool)>,
    /// How many of `births` are self-copies.
    deep: usize,
    /// The last births, newest last.
    recent: VecDeque<NodeId>,
    live: u32,
    /// The live count after each change within the window.
    levels: Levels,
    last_alert: Option<u64>,
}

impl Population {
    fn record(&mut self, now: u64) {
        self.levels.push(now, self.live);
    }

    /// The rush rule on this population: `Some((per_sec, eta_ns))` when,
    /// over the last [`RUSH_SLICES`] slices back from its newest birth, its
    /// task count grew by at least `growth` from its lowest, grew in every
    /// slice, and at that rate reaches `limit` within one window. A spawner
    /// that does not copy itself (`while :; do sleep 1000 & done`) meets it
    /// long before the limit; a pool started once has stopped being born
    /// into, and a build's count does not grow.
    fn rush(&self, rules: &ForkRules, now: u64, limit: u64, current: u64) -> Option<(f64, u64)> {
        let newest = self.births.back().map(|&(t, _, _)| t)?;
        if now.saturating_sub(newest) > RUSH_SLICE_NS {
            return None;
        }
        let span = RUSH_SLICE_NS * RUSH_SLICES;
        let since = newest.checked_sub(span)?;
        // The lowest count of the last `span`.
        let low = self.levels.min_from(since)?;
        let growth = self.live.saturating_sub(low);
        if growth < rules.growth {
            return None;
        }
        // It grew in every slice: no pause, no plateau (a pool that stopped
        // being born into, a build whose tasks end as fast as they start).
        let unbroken = (0..RUSH_SLICES).all(|k| {
            let end = newest - k * RUSH_SLICE_NS;
            let start = end - RUSH_SLICE_NS;
            matches!((self.levels.at(start), self.levels.at(end)), (Some(before), Some(after)) if after > before)
        });
        if !unbroken {
            return None;
        }
        let per_sec = f64::from(growth) * NS as f64 / span as f64;
        let left = limit.saturating_sub(current.max(u64::from(self.live)));
        let eta_ns = (left as f64 / per_sec * NS as f64) as u64;
        (eta_ns <= rules.window_ns).then_some((per_sec, eta_ns))
    }

    /// Births of the window at least `depth` deep: a bomb's copies of
    /// itself. The rule needs half of its births to be these. (Counting
    /// them, not the window's deepest birth: a wrapper script's nested
    /// subshells and its program's worker pool in one window are no bomb
    /// together; measured, pyenv's shim makes fewer than 10.)
    fn deep_births(&self) -> usize {
        self.deep
    }

    /// Growth of the live count from its lowest point in the window.
    fn growth(&self) -> u32 {
        self.live
            .saturating_sub(self.levels.min().unwrap_or(self.live))
    }

    fn prune(&mut self, now: u64, window: u64) {
        let horizon = now.saturating_sub(window);
        while self.births.front().is_some_and(|&(t, _, _)| t < horizon) {
            if let Some((_, _, true)) = self.births.pop_front() {
                self.deep -= 1;
            }
        }
        self.levels.prune(horizon);
    }
}

#[derive(Default)]
struct Trend {
    samples: VecDeque<(u64, u64)>,
    limit: Option<u64>,
    last_alert: Option<u64>,
}

#[derive(Default)]
pub struct ForkDetector {
    rules: ForkRules,
    populations: HashMap<CgroupKey, Population>,
    trends: HashMap<CgroupKey, Trend>,
}

impl ForkDetector {
    pub fn new(rules: ForkRules) -> Self {
        Self {
            rules,
            ..Default::default()
        }
    }

    /// A process that was already alive when guard started, or moved in.
    pub fn present(&mut self, now: u64, cgroup: &CgroupKey) {
        let p = self.populations.entry(cgroup.clone()).or_default();
        p.live += 1;
        p.record(now);
    }

    /// A process was born into `cgroup`, `depth` generations deep in copies
    /// of one program (see `LineageNode::depth`).
    pub fn birth(&mut self, now: u64, cgroup: &CgroupKey, node: NodeId, depth: u32) {
        let p = self.populations.entry(cgroup.clone()).or_default();
        p.live += 1;
        let deep = fork_rule::self_copy(depth, self.rules.depth);
        p.births.push_back((now, node, deep));
        p.deep += usize::from(deep);
        if p.recent.len() == RECENT_BIRTHS {
            p.recent.pop_front();
        }
        p.recent.push_back(node);
        p.record(now);
    }

    /// A process of `cgroup` ended (or moved out).
    pub fn gone(&mut self, now: u64, cgroup: &CgroupKey) {
        if let Some(p) = self.populations.get_mut(cgroup) {
            p.live = p.live.saturating_sub(1);
            p.record(now);
        }
    }

    /// Events were lost: the live counts kept from births and exits may be
    /// too high (a lost exit) or too low (a lost birth), so they are
    /// replaced by `counts` (a recount of the processes known to exist,
    /// per cgroup) and growth is measured from there. A loss can thus make
    /// a population unknown for a moment, never larger.
    pub fn recount(&mut self, now: u64, counts: &HashMap<CgroupKey, u32>) {
        for (cgroup, &live) in counts {
            self.populations.entry(cgroup.clone()).or_default().live = live;
        }
        for (cgroup, p) in &mut self.populations {
            if !counts.contains_key(cgroup) {
                p.live = 0;
            }
            p.levels.clear();
            p.record(now);
        }
    }

    /// A reading of a cgroup's task count and limit (`None`: no limit).
    pub fn pids_sample(&mut self, now: u64, cgroup: &CgroupKey, current: u64, limit: Option<u64>) {
        let t = self.trends.entry(cgroup.clone()).or_default();
        t.samples.push_back((now, current));
        t.limit = limit;
        while t
            .samples
            .front()
            .is_some_and(|&(at, _)| at + TREND_WINDOW_NS < now)
        {
            t.samples.pop_front();
        }
    }

    /// Each cgroup read for pids. For metrics; the rules are not involved.
    pub fn pids_views(&self) -> Vec<PidsView> {
        self.trends
            .iter()
            .filter_map(|(cgroup, t)| {
                let &(_, current) = t.samples.back()?;
                let per_sec = slope_per_sec(&t.samples);
                let eta = match t.limit {
                    Some(limit) if per_sec > 0.0 && current < limit => {
                        Some((limit - current) as f64 / per_sec)
                    }
                    _ => None,
                };
                Some(PidsView {
                    cgroup: cgroup.clone(),
                    current,
                    limit: t.limit,
                    per_sec,
                    eta_secs: eta,
                })
            })
            .collect()
    }

    /// Births in `cgroup` per second, over the window up to `now` (processes
    /// and threads, as the explosion rule counts them); `None` for what is
    /// no population of its own (the host's count).
    pub fn births_per_sec(&self, cgroup: &str, now: u64) -> Option<f64> {
        let window = self.rules.window_ns.max(1);
        let since = now.saturating_sub(window);
        let p = self.populations.get(cgroup)?;
        let births = p.births.iter().filter(|&&(t, _, _)| t >= since).count();
        Some(births as f64 * 1e9 / window as f64)
    }

    /// `cgroup`'s pids.current readings over the trend window: (boot ns,
    /// tasks), oldest first.
    pub fn pids_samples(&self, cgroup: &str) -> Vec<(u64, u64)> {
        self.trends
            .get(cgroup)
            .map(|t| t.samples.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The last births of `cgroup`, newest first (to name an offender).
    pub fn recent(&self, cgroup: &str) -> Vec<NodeId> {
        self.populations
            .get(cgroup)
            .map(|p| p.recent.iter().rev().copied().collect())
            .unwrap_or_default()
    }

    /// Cgroups with live processes or recent births: those to sample.
    pub fn populated(&self) -> Vec<CgroupKey> {
        self.populations
            .iter()
            .filter(|(_, p)| p.live > 0)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Whether some cgroup is a quarter of the way to the explosion rule
    /// (births and growth both): the agent raises its priority then, so that
    /// a bomb's runnable processes cannot starve it, and runs at normal
    /// priority otherwise (a fork+exit loop has births but no growth).
    pub fn armed(&self) -> bool {
        self.populations.values().any(|p| self.is_armed(p))
    }

    fn is_armed(&self, p: &Population) -> bool {
        4 * p.births.len() >= self.rules.min_births()
            && 8 * p.deep_births() >= self.rules.min_births()
            && p.growth() >= self.rules.growth / 4
    }

    /// The armed cgroups, each with its recent births (newest first): the
    /// agent tags the suspected subtree in the kernel then, so that members
    /// born from then on carry the tag whatever happens to the agent.
    pub fn rules(&self) -> ForkRules {
        self.rules
    }

    pub fn armed_populations(&self) -> Vec<(CgroupKey, Vec<NodeId>)> {
        self.populations
            .iter()
            .filter(|(_, p)| self.is_armed(p))
            .map(|(k, p)| (k.clone(), p.recent.iter().rev().copied().collect()))
            .collect()
    }

    /// Evaluates every rule at `now`.
    pub fn check(&mut self, now: u64) -> Vec<ForkVerdict> {
        let mut verdicts = Vec::new();
        let rules = self.rules;
        let min_births = rules.min_births();
        let trends = &self.trends;
        self.populations.retain(|cgroup, p| {
            p.prune(now, rules.window_ns);
            let growth = p.growth();
            let quiet = p
                .last_alert
                .is_none_or(|t| now.saturating_sub(t) >= rules.window_ns);
            let deep_births = p.deep_births();
            // Births, half of them self-copies, and growth: the rule as
            // `guard_common::fork_rule` states it for the fork probe too.
            if fork_rule::explodes(
                p.births.len() as u64,
                deep_births as u64,
                i64::from(growth),
                min_births as u64,
                rules.growth,
            ) && quiet
            {
                p.last_alert = Some(now);
                let span = p
                    .births
                    .front()
                    .map_or(rules.window_ns, |&(t, _, _)| now.saturating_sub(t))
                    .max(1);
                verdicts.push(ForkVerdict::Explosion {
                    cgroup: cgroup.clone(),
                    births: p.births.len() as u32,
                    births_per_sec: p.births.len() as f64 * NS as f64
                        / span.max(rules.window_ns / 10) as f64,
                    growth,
                    deep_births: deep_births as u32,
                    live: p.live,
                    window_ns: rules.window_ns,
                    recent: p.births.iter().rev().take(64).map(|&(_, n, _)| n).collect(),
                });
            } else if quiet
                && let Some(t) = trends.get(cgroup)
                && let Some(limit) = t.limit
            {
                let current = t.samples.back().map_or(0, |&(_, c)| c);
                if let Some((per_sec, eta_ns)) = p.rush(&rules, now, limit, current) {
                    p.last_alert = Some(now);
                    verdicts.push(ForkVerdict::Limit {
                        rule: LimitRule::Rush,
                        cgroup: cgroup.clone(),
                        current: current.max(u64::from(p.live)),
                        limit,
                        per_sec,
                        eta_ns,
                        recent: p.births.iter().rev().take(64).map(|&(_, n, _)| n).collect(),
                    });
                }
            }
            p.live > 0 || !p.births.is_empty() || p.levels.len() > 1 || !p.recent.is_empty()
        });
        // A cgroup no longer read (emptied or removed) is forgotten.
        self.trends.retain(|_, t| {
            t.samples
                .back()
                .is_some_and(|&(at, _)| at + TREND_WINDOW_NS >= now)
        });
        for (cgroup, t) in &mut self.trends {
            let (Some(limit), Some(&(first, _)), Some(&(last, current))) =
                (t.limit, t.samples.front(), t.samples.back())
            else {
                continue;
            };
            if last.saturating_sub(first) < TREND_MIN_SPAN_NS {
                continue;
            }
            let per_sec = slope_per_sec(&t.samples);
            if per_sec <= 0.0 || current >= limit {
                continue;
            }
            let eta_ns = ((limit - current) as f64 / per_sec * NS as f64) as u64;
            let quiet = t
                .last_alert
                .is_none_or(|at| now.saturating_sub(at) >= REALERT_NS);
            if eta_ns <= rules.horizon_ns && quiet {
                t.last_alert = Some(now);
                let recent = self
                    .populations
                    .get(cgroup)
                    .map(|p| p.recent.iter().rev().copied().collect())
                    .unwrap_or_default();
                verdicts.push(ForkVerdict::Limit {
                    rule: LimitRule::Trend,
                    cgroup: cgroup.clone(),
                    current,
                    limit,
                    per_sec,
                    eta_ns,
                    recent,
                });
            }
        }
        verdicts
    }
}

/// Least-squares slope of (ns, value) samples, per second.
fn slope_per_sec(samples: &VecDeque<(u64, u64)>) -> f64 {
    let n = samples.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let t0 = samples.front().map_or(0, |s| s.0);
    let xs = samples.iter().map(|&(t, _)| (t - t0) as f64 / NS as f64);
    let mean_x = xs.clone().sum::<f64>() / n;
    let mean_y = samples.iter().map(|&(_, v)| v as f64).sum::<f64>() / n;
    let (mut num, mut den) = (0.0, 0.0);
    for (x, &(_, y)) in xs.zip(samples) {
        num += (x - mean_x) * (y as f64 - mean_y);
        den += (x - mean_x) * (x - mean_x);
    }
    if den == 0.0 { 0.0 } else { num / den }
}

/// The process (maybe a ghost) whose subtree produced the growth.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offender {
    pub node: NodeId,
    pub tgid: u32,
    pub alive: bool,
}

/// Walks up from each recent birth to the topmost unprotected ancestor;
/// the most common one is the offender. `protected` says why a node may not
/// be touched (or `None`).
pub fn find_offender(
    lineage: &Lineage,
    recent: &[NodeId],
    protected: impl Fn(&LineageNode) -> Option<&'static str>,
) -> Option<Offender> {
    let mut votes: HashMap<NodeId, u32> = HashMap::new();
    for &birth in recent {
        let Some(node) = lineage.get(birth) else {
            continue;
        };
        if protected(node).is_some() {
            continue;
        }
        let mut top = birth;
        for (id, ancestor) in lineage.ancestors(birth) {
            if protected(ancestor).is_some() {
                break;
            }
            top = id;
        }
        *votes.entry(top).or_default() += 1;
    }
    let (&node, _) = votes
        .iter()
        .max_by_key(|&(id, count)| (*count, std::cmp::Reverse(*id)))?;
    let n = lineage.get(node)?;
    Some(Offender {
        node,
        tgid: n.tgid,
        alive: n.alive,
    })
}

#[cfg(test)]
mod tests;
