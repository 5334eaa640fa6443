//! Incidents: the lifecycle that ties one runaway's records together. Every
//! alert, action, refusal and `resolved` record of one runaway carries the
//! same incident id; a detector's repeated verdicts on a runaway already
//! reported update its incident instead of raising new alerts (only a rise
//! in severity is told again, as an update); and every incident ends with
//! one `resolved` record that says how it ended.
//!
//! Pure: verdicts, outcomes and a clock in, what to write out. The pipeline
//! (`pipeline::incidents`) says which runaway a verdict is about
//! ([`Subject`]) and whether two subjects are the same runaway (a subtree
//! and a subtree inside it are).
//!
//! How an incident ends ([`Ended`]):
//! - `gone`: its subtree has no live member left, and guard did not act;
//! - `contained`: guard acted and verified it, and no verdict came within
//!   [`SETTLE_NS`] after (or the subtree is gone);
//! - `subsided`: no verdict for the detector's quiet period (the detector
//!   would have repeated its verdict in that time had the runaway gone on);
//! - `lifted`: a refusal was lifted (by the operator or its time limit);
//! - `agent_stopped`: the agent stopped with the incident open.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Serialize;

use crate::{detect::switches::Detector, host::proctable::NodeId, output::record::Rule};

/// How bad an alert is. `warning`: a limit is projected to run out (time to
/// look, or for a `log` policy to be changed); `critical`: it is running out
/// now or within seconds, or a program is failing in a sustained loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Warning,
    Critical,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// How an incident ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Ended {
    Gone,
    Contained,
    Subsided,
    Lifted,
    AgentStopped,
}

/// What a verdict is about: the runaway an incident follows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    /// A subtree, by its root's lineage node (`None`: the fork probe
    /// condemned it before the agent knew the root) and its kernel tag.
    Lineage { node: Option<NodeId>, tag: u64 },
    /// A cgroup or a memory pool (`host` for the host's memory).
    Cgroup(String),
    /// A crash loop: its supervisor and its program.
    Loop { supervisor: u32, program: String },
    /// The host as a whole (a blocked-task storm).
    Host,
}

/// After a verified action, the time without a new verdict before the
/// incident is `contained`.
pub const SETTLE_NS: u64 = 5_000_000_000;

/// An action asked for keeps its incident open this long at most (an
/// action lost on its way does not keep it open for ever).
pub const ACTING_AT_MOST_NS: u64 = 60_000_000_000;

/// An open incident.
#[derive(Clone, Debug)]
pub struct Incident {
    pub id: String,
    pub detector: Detector,
    /// The rule of its first alert.
    pub rule: Rule,
    /// The highest severity told.
    pub severity: Severity,
    pub subject: Subject,
    pub opened_ns: u64,
    pub last_verdict_ns: u64,
    /// Alerts written (the first, and updates).
    pub alerts: u64,
    /// Verdicts that repeated what was told, not written.
    pub repeats: u64,
    /// Actions taken on it (follow-up rounds included).
    pub actions: u64,
    /// The last action was verified contained.
    pub contained: bool,
    /// A refusal is in force on it: it stays open meanwhile.
    pub refusing: bool,
    /// Actions asked for and not finished yet, and since when: it stays
    /// open meanwhile (for [`ACTING_AT_MOST_NS`] at most).
    pub acting: u32,
    pub acting_since_ns: u64,
    /// How it ends once the actions asked for are in: a refusal that ended
    /// (its subtree gone, or lifted) while a follow-up was still on its
    /// way, whose report and `resolved` record must come after it.
    pub ending: Option<Ended>,
    /// Its offender's pid, when one was blamed.
    pub offender_pid: Option<u32>,
}

/// What to do with a verdict's alert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Told {
    /// A new incident: write the alert.
    New,
    /// More severe than told so far: write the alert as an update.
    Update,
    /// Nothing new: count it, write nothing.
    Repeat,
}

/// An incident that ended, for its `resolved` record.
#[derive(Clone, Debug)]
pub struct Closed {
    pub incident: Incident,
    pub ended: Ended,
    pub at_ns: u64,
}

/// The open incidents.
#[derive(Debug)]
pub struct Incidents {
    /// Ids are `<prefix>-<n>`: the agent's start time makes them unique on
    /// a host across restarts.
    prefix: String,
    next: u64,
    open: BTreeMap<String, Incident>,
}

impl Incidents {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            next: 1,
            open: BTreeMap::new(),
        }
    }

    pub fn get(&self, id: &str) -> Option<&Incident> {
        self.open.get(id)
    }

    pub fn open(&self) -> impl Iterator<Item = &Incident> {
        self.open.values()
    }

    /// A verdict: the open incident of `detector` whose subject `same` says
    /// is this one's, or a new one. Returns its id and what to write.
    pub fn raise(
        &mut self,
        now: u64,
        verdict: (Detector, Rule, Severity),
        subject: Subject,
        offender_pid: Option<u32>,
        same: impl Fn(&Subject, &Subject) -> bool,
    ) -> (String, Told) {
        let (detector, rule, severity) = verdict;
        if let Some(open) = self
            .open
            .values_mut()
            .find(|i| i.detector == detector && same(&i.subject, &subject))
        {
            open.last_verdict_ns = now;
            open.offender_pid = open.offender_pid.or(offender_pid);
            if let (Subject::Lineage { node: None, .. }, Subject::Lineage { node: Some(_), .. }) =
                (&open.subject, &subject)
            {
                // The root the probe's condemnation did not know.
                open.subject = subject;
            }
            return if severity > open.severity {
                open.severity = severity;
                open.alerts += 1;
                (open.id.clone(), Told::Update)
            } else {
                open.repeats += 1;
                (open.id.clone(), Told::Repeat)
            };
        }
        let id = format!("{}-{}", self.prefix, self.next);
        self.next += 1;
        self.open.insert(
            id.clone(),
            Incident {
                id: id.clone(),
                detector,
                rule,
                severity,
                subject,
                opened_ns: now,
                last_verdict_ns: now,
                alerts: 1,
                repeats: 0,
                actions: 0,
                contained: false,
                refusing: false,
                acting: 0,
                acting_since_ns: 0,
                ending: None,
                offender_pid,
            },
        );
        (id, Told::New)
    }

    /// An action on `id` was asked for: until it finishes, the incident
    /// stays open (its subtree may be gone before the action is reported).
    pub fn requested(&mut self, id: &str, now: u64) {
        if let Some(i) = self.open.get_mut(id) {
            if i.acting == 0 {
                i.acting_since_ns = now;
            }
            i.acting += 1;
        }
    }

    /// An action on `id` finished: `contained` verified, `refusing` a
    /// refusal now in force.
    pub fn acted(&mut self, id: &str, now: u64, contained: bool, refusing: bool) {
        if let Some(i) = self.open.get_mut(id) {
            i.acting = i.acting.saturating_sub(1);
            i.actions += 1;
            i.contained = contained && !refusing;
            i.refusing |= refusing;
            // The settle period runs from the action's end.
            i.last_verdict_ns = i.last_verdict_ns.max(now);
        }
    }

    /// A refusal on `id` ended without a next step: `why` (`None`: it was
    /// released by the containment that followed it, which the incident
    /// goes on with).
    pub fn refusal_ended(&mut self, id: &str, now: u64, why: Option<Ended>) -> Option<Closed> {
        let i = self.open.get_mut(id)?;
        i.refusing = false;
        i.last_verdict_ns = i.last_verdict_ns.max(now);
        match why {
            // An action still on its way (a follow-up for members the
            // refusal could not tag yet) ends it when it is in.
            Some(ended) if i.acting > 0 => {
                i.ending = Some(ended);
                None
            }
            Some(ended) => self.close(id, now, ended),
            None => None,
        }
    }

    /// Ends `id` now (a storm that is over, a subtree found gone).
    pub fn close(&mut self, id: &str, now: u64, ended: Ended) -> Option<Closed> {
        let incident = self.open.remove(id)?;
        let ended = match ended {
            Ended::Gone if incident.contained || incident.actions > 0 => Ended::Contained,
            other => other,
        };
        Some(Closed {
            incident,
            ended,
            at_ns: now,
        })
    }

    /// Ends what is over at `now`: subtrees `gone` says have no live member,
    /// and incidents with no verdict for `quiet(detector)` (or
    /// [`SETTLE_NS`] after a verified action). A refusal in force keeps its
    /// incident open.
    pub fn expire(
        &mut self,
        now: u64,
        quiet: impl Fn(Detector) -> u64,
        gone: impl Fn(&Subject) -> bool,
    ) -> Vec<Closed> {
        let over: Vec<(String, Ended)> = self
            .open
            .values()
            .filter(|i| !i.refusing)
            .filter(|i| i.acting == 0 || now.saturating_sub(i.acting_since_ns) >= ACTING_AT_MOST_NS)
            .filter_map(|i| {
                let idle = now.saturating_sub(i.last_verdict_ns);
                if let Some(ended) = i.ending {
                    Some((i.id.clone(), ended))
                } else if gone(&i.subject) {
                    Some((i.id.clone(), Ended::Gone))
                } else if i.contained && idle >= SETTLE_NS {
                    Some((i.id.clone(), Ended::Contained))
                } else if idle >= quiet(i.detector) {
                    Some((i.id.clone(), Ended::Subsided))
                } else {
                    None
                }
            })
            .collect();
        over.into_iter()
            .filter_map(|(id, ended)| self.close(&id, now, ended))
            .collect()
    }

    /// Ends every open incident (the agent stops).
    pub fn close_all(&mut self, now: u64) -> Vec<Closed> {
        let ids: Vec<String> = self.open.keys().cloned().collect();
        ids.iter()
            .filter_map(|id| self.close(id, now, Ended::AgentStopped))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn lineage(node: NodeId) -> Subject {
        Subject::Lineage {
            node: Some(node),
            tag: node,
        }
    }

    fn equal(a: &Subject, b: &Subject) -> bool {
        a == b
    }

    const EXPLOSION: (Detector, Rule, Severity) =
        (Detector::Fork, Rule::Explosion, Severity::Critical);

    #[test]
    fn repeated_verdicts_on_one_runaway_are_one_incident() {
        let mut inc = Incidents::new("t");
        let (a, told) = inc.raise(0, EXPLOSION, lineage(7), Some(70), equal);
        assert_eq!((a.as_str(), told), ("t-1", Told::New));
        for k in 1..5 {
            let (b, told) = inc.raise(k * S, EXPLOSION, lineage(7), None, equal);
            assert_eq!((b.as_str(), told), ("t-1", Told::Repeat));
        }
        // Another subtree, or another detector on the same one, is another.
        let (c, told) = inc.raise(5 * S, EXPLOSION, lineage(8), None, equal);
        assert_eq!((c.as_str(), told), ("t-2", Told::New));
        let leak = (Detector::Leak, Rule::Leak, Severity::Warning);
        let (d, _) = inc.raise(5 * S, leak, lineage(7), None, equal);
        assert_eq!(d, "t-3");
        let i = inc.get("t-1").expect("open");
        assert_eq!((i.alerts, i.repeats, i.offender_pid), (1, 4, Some(70)));
    }

    #[test]
    fn a_rise_in_severity_is_told_as_an_update_and_a_fall_is_not() {
        let mut inc = Incidents::new("t");
        let loop_of = || Subject::Loop {
            supervisor: 5,
            program: "server".into(),
        };
        let early = (Detector::Crashloop, Rule::CrashLoop, Severity::Warning);
        let sustained = (Detector::Crashloop, Rule::CrashLoop, Severity::Critical);
        assert_eq!(inc.raise(0, early, loop_of(), None, equal).1, Told::New);
        assert_eq!(
            inc.raise(S, sustained, loop_of(), None, equal).1,
            Told::Update
        );
        assert_eq!(
            inc.raise(2 * S, early, loop_of(), None, equal).1,
            Told::Repeat
        );
        assert_eq!(inc.get("t-1").map(|i| i.severity), Some(Severity::Critical));
    }

    #[test]
    fn an_incident_subsides_after_its_detectors_quiet_period() {
        let mut inc = Incidents::new("t");
        let memory = (Detector::Memory, Rule::MemoryLimitTrend, Severity::Warning);
        inc.raise(0, memory, Subject::Cgroup("/a".into()), None, equal);
        let quiet = |_| 30 * S;
        assert!(inc.expire(29 * S, quiet, |_| false).is_empty());
        // A verdict restarts the period.
        inc.raise(29 * S, memory, Subject::Cgroup("/a".into()), None, equal);
        assert!(inc.expire(58 * S, quiet, |_| false).is_empty());
        let closed = inc.expire(59 * S, quiet, |_| false);
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].ended, Ended::Subsided);
        assert_eq!(closed[0].incident.repeats, 1);
        assert!(inc.get("t-1").is_none());
    }

    #[test]
    fn a_contained_incident_ends_once_settled_or_gone() {
        let mut inc = Incidents::new("t");
        let quiet = |_| 600 * S;
        inc.raise(0, EXPLOSION, lineage(1), None, equal);
        inc.acted("t-1", S / 10, true, false);
        assert!(inc.expire(S, quiet, |_| false).is_empty());
        let closed = inc.expire(S / 10 + SETTLE_NS, quiet, |_| false);
        assert_eq!(closed[0].ended, Ended::Contained);
        assert_eq!(closed[0].incident.actions, 1);

        // Gone while an action runs: open until it is reported (or for a
        // minute at most). Gone after an action is contained; gone without
        // one is gone.
        inc.raise(0, EXPLOSION, lineage(2), None, equal);
        inc.requested("t-2", 0);
        assert!(inc.expire(S, quiet, |_| true).is_empty());
        inc.acted("t-2", S, false, false);
        inc.raise(0, EXPLOSION, lineage(3), None, equal);
        let closed = inc.expire(2 * S, quiet, |_| true);
        let ended: Vec<_> = closed
            .iter()
            .map(|c| (c.incident.id.as_str(), c.ended))
            .collect();
        assert_eq!(ended, [("t-2", Ended::Contained), ("t-3", Ended::Gone)]);
    }

    #[test]
    fn a_refusal_keeps_its_incident_open_until_it_ends() {
        let mut inc = Incidents::new("t");
        inc.raise(0, EXPLOSION, lineage(1), None, equal);
        inc.acted("t-1", 0, false, true);
        assert!(inc.expire(3600 * S, |_| S, |_| false).is_empty());
        // Released by the ladder's next step: still open, then contained.
        assert!(inc.refusal_ended("t-1", 3600 * S, None).is_none());
        inc.acted("t-1", 3600 * S, true, false);
        let closed = inc.expire(3600 * S + SETTLE_NS, |_| 7200 * S, |_| false);
        assert_eq!(
            (closed[0].ended, closed[0].incident.actions),
            (Ended::Contained, 2)
        );
        // Lifted by the operator.
        inc.raise(0, EXPLOSION, lineage(2), None, equal);
        inc.acted("t-2", 0, false, true);
        let closed = inc.refusal_ended("t-2", S, Some(Ended::Lifted));
        assert_eq!(closed.map(|c| c.ended), Some(Ended::Lifted));
        // Its subtree gone while a follow-up is on its way: it ends once
        // the follow-up is in, so the report holds every action.
        let (id, _) = inc.raise(0, EXPLOSION, lineage(4), None, equal);
        assert_eq!(id, "t-3");
        inc.requested("t-3", 0);
        inc.acted("t-3", 0, false, true);
        inc.requested("t-3", S);
        assert!(inc.refusal_ended("t-3", S, Some(Ended::Gone)).is_none());
        assert!(inc.expire(2 * S, |_| 3600 * S, |_| false).is_empty());
        inc.acted("t-3", 2 * S, false, false);
        let closed = inc.expire(2 * S, |_| 3600 * S, |_| false);
        assert_eq!(
            (closed[0].ended, closed[0].incident.actions),
            (Ended::Contained, 2),
            "gone, after actions: contained"
        );
        // An action never reported keeps it open a minute at most.
        let (id, _) = inc.raise(0, EXPLOSION, lineage(3), None, equal);
        assert_eq!(id, "t-4");
        inc.requested("t-4", 0);
        assert!(
            inc.expire(ACTING_AT_MOST_NS - 1, |_| 3600 * S, |_| true)
                .is_empty()
        );
        let closed = inc.expire(ACTING_AT_MOST_NS, |_| 3600 * S, |_| true);
        assert_eq!(closed.len(), 1);
    }

    #[test]
    fn the_probes_condemnation_learns_its_root_and_stopping_ends_all() {
        let mut inc = Incidents::new("t");
        let by_tag = |a: &Subject, b: &Subject| match (a, b) {
            (Subject::Lineage { tag: x, .. }, Subject::Lineage { tag: y, .. }) => x == y,
            _ => false,
        };
        inc.raise(
            0,
            EXPLOSION,
            Subject::Lineage { node: None, tag: 9 },
            None,
            by_tag,
        );
        let (_, told) = inc.raise(S, EXPLOSION, lineage(9), Some(90), by_tag);
        assert_eq!(told, Told::Repeat);
        assert_eq!(inc.get("t-1").map(|i| &i.subject), Some(&lineage(9)));
        inc.raise(S, EXPLOSION, lineage(10), None, by_tag);
        let closed = inc.close_all(2 * S);
        assert_eq!(closed.len(), 2);
        assert!(closed.iter().all(|c| c.ended == Ended::AgentStopped));
    }
}
