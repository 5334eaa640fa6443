//! The fork guard's explosion rule, once for the kernel and the agent: its
//! defaults, its predicate and its window.
//!
//! A subtree (or a cgroup) explodes when one window holds at least
//! `min_births` births, half of them self-copies (births at least
//! `min_depth` generations deep in copies of one program), and its live
//! count grew by at least `min_growth` from its lowest in the window.
//!
//! The two sides differ only in their window, on purpose:
//! - the fork probe (`guard-ebpf/src/fork_guard.rs`) keeps a **tumbling**
//!   window per subtree, in a map value updated with atomics on every CPU:
//!   it starts over at the first birth more than a window after it began
//!   ([`window_over`]);
//! - the agent (`guard-user/src/detect/fork.rs`) keeps a **sliding** window
//!   per cgroup.
//!
//! A tumbling window at any birth holds a subset of the sliding window's
//! births, and its lowest live count is at least the sliding window's, so
//! the probe never condemns what the agent's rule would not call an
//! explosion at the same moment; a sustained explosion meets both, the
//! probe's within two windows of the agent's. [`KernelBudget`] is the
//! probe's rule in plain Rust (same predicate, same window), and the
//! agent's tests drive it and the agent's detector with the same event
//! sequences to hold both claims.

/// `--fork-window-ms`, by default.
pub const DEFAULT_WINDOW_MS: u64 = 1000;
/// `--fork-rate` (births per second, over the window), by default.
pub const DEFAULT_RATE: f64 = 100.0;
/// `--fork-growth` (live tasks), by default.
pub const DEFAULT_GROWTH: u32 = 32;
/// `--fork-depth`, by default. A bomb is a program whose copies fork
/// copies: a bash bomb is 4 deep after 30 births, a Python `os.fork()`
/// loop after 4 rounds. Ordinary work forks children that exec something
/// else (make → sh → cc, xargs → task, pytest → python worker), 1 deep, or
/// 2 to 3 in nested subshells and pools of pools.
pub const DEFAULT_DEPTH: u32 = 4;
/// `--fork-horizon` (seconds to pids.max that the trend rule alerts at),
/// by default.
pub const DEFAULT_HORIZON_SECS: u64 = 30;

/// Whether a birth `depth` generations deep in copies of one program is a
/// self-copy.
#[inline(always)]
pub const fn self_copy(depth: u32, min_depth: u32) -> bool {
    depth >= min_depth
}

/// The rule over one window's counts: enough births, half of them
/// self-copies, and growth.
#[inline(always)]
pub const fn explodes(
    births: u64,
    deep_births: u64,
    growth: i64,
    min_births: u64,
    min_growth: u32,
) -> bool {
    births >= min_births && 2 * deep_births >= min_births && growth >= min_growth as i64
}

/// The probe's tumbling window: a birth at `now_ns` starts a new one when
/// the current one began more than `window_ns` before.
#[inline(always)]
pub const fn window_over(start_ns: u64, now_ns: u64, window_ns: u64) -> bool {
    now_ns.saturating_sub(start_ns) > window_ns
}

/// Births a window must hold: the rate times the window, rounded up, at
/// least one.
#[cfg(feature = "user")]
pub fn min_births(rate: f64, window_ns: u64) -> u64 {
    (rate * window_ns as f64 / 1e9).ceil().max(1.0) as u64
}

/// The fork probe's rule for one subtree in plain Rust: what `count_birth`
/// and `count_exit` do to a `ForkBudget`, with one CPU's arithmetic in
/// place of the atomics.
#[cfg(feature = "user")]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelBudget {
    pub window_start_ns: u64,
    pub window_ns: u64,
    pub births: u64,
    pub deep_births: u64,
    /// Signed, as the probe reads it (late-tagged members' exits).
    pub live: i64,
    pub min_live: i64,
    pub min_births: u64,
    pub min_growth: u32,
    pub min_depth: u32,
    /// When the rule condemned the subtree (boot ns).
    pub condemned_at: Option<u64>,
}

#[cfg(feature = "user")]
impl KernelBudget {
    /// A subtree tagged at `now_ns` (`tag_subtree`): its root's own birth
    /// is not counted.
    pub fn new(
        now_ns: u64,
        window_ns: u64,
        min_births: u64,
        min_growth: u32,
        min_depth: u32,
    ) -> Self {
        Self {
            window_start_ns: now_ns,
            window_ns,
            births: 0,
            deep_births: 0,
            live: 0,
            min_live: 0,
            min_births,
            min_growth,
            min_depth,
            condemned_at: None,
        }
    }

    /// A member was born `depth` deep at `now_ns`; true when this birth
    /// condemns the subtree.
    pub fn birth(&mut self, now_ns: u64, depth: u32) -> bool {
        if window_over(self.window_start_ns, now_ns, self.window_ns) {
            self.window_start_ns = now_ns;
            self.births = 0;
            self.deep_births = 0;
            self.min_live = self.live;
        }
        if self_copy(depth, self.min_depth) {
            self.deep_births += 1;
        }
        self.births += 1;
        self.live += 1;
        let growth = self.live - self.min_live;
        if !explodes(
            self.births,
            self.deep_births,
            growth,
            self.min_births,
            self.min_growth,
        ) || self.condemned_at.is_some()
        {
            return false;
        }
        self.condemned_at = Some(now_ns);
        true
    }

    /// A member is gone.
    pub fn exit(&mut self) {
        self.live -= 1;
        if self.live < self.min_live {
            self.min_live = self.live;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_predicate_needs_all_three() {
        assert!(explodes(100, 50, 32, 100, 32));
        assert!(!explodes(99, 50, 32, 100, 32), "births");
        assert!(!explodes(100, 49, 32, 100, 32), "self-copies");
        assert!(!explodes(100, 50, 31, 100, 32), "growth");
        assert!(window_over(0, 1_000_000_001, 1_000_000_000));
        assert!(!window_over(0, 1_000_000_000, 1_000_000_000));
        assert!(self_copy(4, 4) && !self_copy(3, 4));
    }
}
