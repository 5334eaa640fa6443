//! Refusals in force: how each one goes, and when it ends.
//!
//! A `refuse` action leaves a lineage running and has the kernel fail its
//! forks (see guard-ebpf's `refuse.rs`). From then on, once a second, this
//! tracker reads what the kernel refused and decides:
//!
//! - **trying / quiet.** The lineage is *trying* while forks are refused;
//!   *quiet* once none has been for [`QUIET_NS`] (it gave up, or makes do
//!   with what it has). Each change is reported once, with the count, the
//!   rate over the last reading and the peak rate.
//! - **the ladder.** For `refuse-then-stop` and `refuse-then-kill`: from
//!   `--refuse-grace` on, a lineage that was refused a fork within the last
//!   quarter of the grace is still trying, and takes the next step. One
//!   that gave up stays refused (and is judged the same way if it starts
//!   again).
//! - **the end.** The lineage is gone (no member alive); the time limit
//!   (`--refuse-for`) passed; an operator lifted it (SIGUSR2); the kernel
//!   no longer holds it; or the agent stops (its maps go with it).
//!
//! Pure: readings and a clock in, changes out; the pipeline reads the kernel
//! and writes the records.

use std::collections::BTreeMap;

use guard_common::Refusal;

use crate::respond::policy::ActionKind;

pub const DEFAULT_GRACE_SECS: u64 = 10;
pub const DEFAULT_LIMIT_SECS: u64 = 600;
/// No refusal for this long: the lineage stopped trying.
pub const QUIET_NS: u64 = 5_000_000_000;
const NS: u64 = 1_000_000_000;

/// `--refuse-grace` and `--refuse-for`, in ns (limit 0: none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefusalRules {
    pub grace_ns: u64,
    pub limit_ns: u64,
}

impl Default for RefusalRules {
    fn default() -> Self {
        Self {
            grace_ns: DEFAULT_GRACE_SECS * NS,
            limit_ns: DEFAULT_LIMIT_SECS * NS,
        }
    }
}

/// Why a refusal ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Ended {
    /// No member is alive.
    Gone,
    /// `--refuse-for` passed.
    Expired,
    /// An operator lifted it (SIGUSR2).
    Lifted,
    /// The kernel no longer holds it (another action on the same subtree
    /// released it).
    Released,
    /// The ladder's next step (see `then`) took over.
    Escalated,
    /// The agent stopped: its maps, and the refusal, went with it.
    AgentStopped,
}

/// What changed about one refusal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Forks are being refused.
    Trying,
    /// None for a while: the lineage stopped trying.
    Quiet,
    /// The refusal is over (see `ended`).
    Ended,
}

/// One refusal's figures at a change.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Figures {
    pub state: State,
    pub ended: Option<Ended>,
    /// Forks and clones refused since the refusal began.
    pub refused: u64,
    /// Members born since it began: forks already past the hook.
    pub slipped: u64,
    /// Refused per second over the last reading.
    pub per_second: f64,
    pub peak_per_second: f64,
    /// When the first and the last were refused (boot ns).
    pub first_refused_ns: Option<u64>,
    pub last_refused_ns: Option<u64>,
    /// Since the refusal began.
    pub refusing_ns: u64,
    /// Members alive now.
    pub members: usize,
    /// The ladder's next step, when this change takes it.
    pub then: Option<ActionKind>,
}

/// One refusal in force, about `S` (what the action was taken on).
#[derive(Clone, Debug)]
pub struct Refusing<S> {
    pub subject: S,
    then: Option<ActionKind>,
    started_ns: u64,
    read_ns: u64,
    refused: u64,
    slipped: u64,
    first_ns: Option<u64>,
    last_ns: Option<u64>,
    peak: f64,
    per_second: f64,
    state: State,
    members: usize,
}

/// The refusals in force, by lineage tag.
#[derive(Clone, Debug)]
pub struct Refusals<S> {
    rules: RefusalRules,
    by_tag: BTreeMap<u64, Refusing<S>>,
}

impl<S> Refusals<S> {
    pub fn new(rules: RefusalRules) -> Self {
        Self {
            rules,
            by_tag: BTreeMap::new(),
        }
    }

    pub fn set_rules(&mut self, rules: RefusalRules) {
        self.rules = rules;
    }

    pub fn is_empty(&self) -> bool {
        self.by_tag.is_empty()
    }

    pub fn contains(&self, tag: u64) -> bool {
        self.by_tag.contains_key(&tag)
    }

    /// What the refusal of `tag` was taken on.
    pub fn subject(&self, tag: u64) -> Option<&S> {
        self.by_tag.get(&tag).map(|r| &r.subject)
    }

    /// A refusal began at `now`; `then` is the ladder's next step.
    pub fn start(&mut self, tag: u64, subject: S, then: Option<ActionKind>, now: u64) {
        self.by_tag.insert(
            tag,
            Refusing {
                subject,
                then,
                started_ns: now,
                read_ns: now,
                refused: 0,
                slipped: 0,
                first_ns: None,
                last_ns: None,
                peak: 0.0,
                per_second: 0.0,
                state: State::Quiet,
                members: 0,
            },
        );
    }

    /// Reads every refusal (`read`: the kernel's count, `None` when it no
    /// longer holds it; `alive`: members alive) and returns the changes,
    /// with the subject of each one that ended (the caller lifts those in
    /// the kernel, and takes the ladder's step when `then` says so).
    pub fn observe(
        &mut self,
        now: u64,
        mut read: impl FnMut(u64) -> Option<Refusal>,
        mut alive: impl FnMut(u64) -> usize,
    ) -> Vec<(u64, Figures, Option<S>)> {
        let rules = self.rules;
        let mut changes = Vec::new();
        let mut ended = Vec::new();
        for (&tag, r) in &mut self.by_tag {
            r.members = alive(tag);
            let Some(reading) = read(tag) else {
                ended.push((tag, Ended::Released, None));
                continue;
            };
            r.take(reading, now);
            if r.members == 0 {
                ended.push((tag, Ended::Gone, None));
                continue;
            }
            if let Some(then) = r.then
                && now >= r.started_ns + rules.grace_ns
                && r.last_ns
                    .is_some_and(|last| now.saturating_sub(last) <= rules.grace_ns / 4)
            {
                ended.push((tag, Ended::Escalated, Some(then)));
                continue;
            }
            if rules.limit_ns > 0 && now >= r.started_ns + rules.limit_ns {
                ended.push((tag, Ended::Expired, None));
                continue;
            }
            let state = match r.last_ns {
                Some(last) if now.saturating_sub(last) < QUIET_NS => State::Trying,
                _ => State::Quiet,
            };
            if state != r.state {
                r.state = state;
                // Quiet from the start is no news.
                if r.first_ns.is_some() {
                    changes.push((tag, r.figures(now, None, None), None));
                }
            }
        }
        for (tag, why, then) in ended {
            if let Some(r) = self.by_tag.remove(&tag) {
                let figures = r.figures(now, Some(why), then);
                changes.push((tag, figures, Some(r.subject)));
            }
        }
        changes
    }

    /// Ends every refusal now (`why`: lifted by an operator, or the agent
    /// stopping).
    pub fn end_all(&mut self, now: u64, why: Ended) -> Vec<(u64, Figures, S)> {
        std::mem::take(&mut self.by_tag)
            .into_iter()
            .map(|(tag, r)| (tag, r.figures(now, Some(why), None), r.subject))
            .collect()
    }
}

impl<S> Refusing<S> {
    fn take(&mut self, reading: Refusal, now: u64) {
        let new = reading.refused.saturating_sub(self.refused);
        let dt = now.saturating_sub(self.read_ns);
        self.per_second = if dt > 0 {
            new as f64 * NS as f64 / dt as f64
        } else {
            0.0
        };
        self.peak = self.peak.max(self.per_second);
        self.read_ns = now;
        self.refused = reading.refused;
        self.slipped = reading.slipped;
        if new > 0 && reading.last_ns > 0 {
            // The kernel's times are exact; the first is known to within
            // the reading that saw it.
            self.first_ns.get_or_insert(reading.last_ns);
            self.last_ns = Some(reading.last_ns);
        }
    }

    fn figures(&self, now: u64, ended: Option<Ended>, then: Option<ActionKind>) -> Figures {
        Figures {
            state: if ended.is_some() {
                State::Ended
            } else {
                self.state
            },
            ended,
            refused: self.refused,
            slipped: self.slipped,
            per_second: self.per_second,
            peak_per_second: self.peak,
            first_refused_ns: self.first_ns,
            last_refused_ns: self.last_ns,
            refusing_ns: now.saturating_sub(self.started_ns),
            members: self.members,
            then,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_000 * NS;

    fn reading(refused: u64, last_ns: u64) -> Option<Refusal> {
        Some(Refusal {
            refused,
            last_ns,
            slipped: 0,
        })
    }

    fn rules() -> RefusalRules {
        RefusalRules {
            grace_ns: 8 * NS,
            limit_ns: 60 * NS,
        }
    }

    #[test]
    fn forks_that_slipped_past_the_hook_are_reported_as_the_kernel_counts_them() {
        let mut r = Refusals::new(rules());
        r.start(7, "bomb", None, T0);
        let read = |slipped| {
            Some(Refusal {
                refused: 10,
                last_ns: T0 + 1,
                slipped,
            })
        };
        let c = r.observe(T0 + NS, |_| read(3), |_| 40);
        assert_eq!((c[0].1.refused, c[0].1.slipped), (10, 3));
        let ended = r.end_all(T0 + 2 * NS, Ended::Lifted);
        assert_eq!(ended[0].1.slipped, 3, "the last reading's count ends it");
    }

    #[test]
    fn a_lineage_that_tries_then_gives_up_is_reported_trying_then_quiet() {
        let mut r = Refusals::new(rules());
        r.start(7, "bomb", None, T0);
        let c = r.observe(T0 + NS, |_| reading(500, T0 + NS - 1), |_| 40);
        assert_eq!(c.len(), 1);
        let f = c[0].1;
        assert_eq!((f.state, f.refused, f.members), (State::Trying, 500, 40));
        assert!((f.per_second - 500.0).abs() < 1e-9);
        assert_eq!(f.first_refused_ns, Some(T0 + NS - 1));
        // Still trying: no news.
        assert!(
            r.observe(T0 + 2 * NS, |_| reading(900, T0 + 2 * NS - 5), |_| 40)
                .is_empty()
        );
        // Nothing refused for QUIET_NS: quiet, with the peak.
        let later = T0 + 2 * NS + QUIET_NS;
        let c = r.observe(later, |_| reading(900, T0 + 2 * NS - 5), |_| 40);
        let f = c[0].1;
        assert_eq!((f.state, f.refused), (State::Quiet, 900));
        assert!((f.peak_per_second - 500.0).abs() < 1e-9);
        assert_eq!(f.last_refused_ns, Some(T0 + 2 * NS - 5));
        assert!(r.contains(7), "a plain refuse stays in force");
    }

    #[test]
    fn a_ladder_steps_up_only_while_the_lineage_still_tries_after_the_grace() {
        let mut r = Refusals::new(rules());
        r.start(1, "keeps trying", Some(ActionKind::Kill), T0);
        r.start(2, "gave up", Some(ActionKind::Kill), T0);
        let last = |tag: u64, now: u64| if tag == 1 { now - NS / 2 } else { T0 + NS };
        let mut escalated = Vec::new();
        for s in 1..=12 {
            let now = T0 + s * NS;
            for (tag, f, subject) in r.observe(now, |t| reading(10 * s, last(t, now)), |_| 3) {
                if f.ended.is_some() {
                    escalated.push((tag, s, f.ended, f.then, subject));
                }
            }
        }
        assert_eq!(
            escalated,
            [(
                1,
                8,
                Some(Ended::Escalated),
                Some(ActionKind::Kill),
                Some("keeps trying")
            )],
            "at the grace, the one still trying; the other stays refused"
        );
        assert!(r.contains(2));
    }

    #[test]
    fn a_refusal_ends_when_its_lineage_is_gone_at_its_time_limit_or_when_released() {
        let mut r = Refusals::new(rules());
        r.start(1, (), None, T0);
        r.start(2, (), None, T0);
        r.start(3, (), None, T0);
        let c = r.observe(
            T0 + NS,
            |t| (t != 3).then_some(Refusal::default()),
            |t| usize::from(t != 1),
        );
        let ends: Vec<(u64, Option<Ended>)> = c.iter().map(|(t, f, _)| (*t, f.ended)).collect();
        assert_eq!(ends, [(1, Some(Ended::Gone)), (3, Some(Ended::Released))]);
        let c = r.observe(T0 + 60 * NS, |_| Some(Refusal::default()), |_| 1);
        assert_eq!(c[0].1.ended, Some(Ended::Expired));
        assert!(r.is_empty());

        // No limit: only the end of the lineage or an operator ends it.
        let mut r = Refusals::new(RefusalRules {
            limit_ns: 0,
            ..rules()
        });
        r.start(4, (), None, T0);
        assert!(
            r.observe(T0 + 86_400 * NS, |_| Some(Refusal::default()), |_| 1)
                .is_empty()
        );
        let all = r.end_all(T0 + 86_401 * NS, Ended::Lifted);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].1.ended, Some(Ended::Lifted));
        assert_eq!(all[0].1.refusing_ns, 86_401 * NS);
    }
}
