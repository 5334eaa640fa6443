//! Glue for incidents (`output::incident` holds the lifecycle): every
//! alert is raised on its runaway's incident and written only when it
//! tells something new; actions and refusals carry the incident's id; each
//! tick ends the incidents that are over with a `resolved` record.

use std::io::{self, Write};

use crate::{
    detect::{fork::REALERT_NS, switches::Detector},
    host::proctable::NodeId,
    output::{
        incident::{Closed, Ended, Subject, Told},
        record::Resolved,
    },
    pipeline::{ActionRequest, Pipeline, unprotected_members},
    respond::act::ProcState,
};

use super::Alert;

/// An incident of a detector that judges every tick (the blocked-task
/// storm ends itself) subsides after this long without a verdict at most.
const BACKSTOP_NS: u64 = 3_600_000_000_000;

/// Ancestors looked through to tell whether two subtrees are one.
const ANCESTRY_DEPTH: usize = 4096;

impl<W: Write> Pipeline<W> {
    /// Raises `alert` on `subject`'s incident, and writes it when it tells
    /// something new (a new runaway, or a rise in severity). Returns the
    /// incident's id, for the action the alert asks for.
    pub(super) fn raise(
        &mut self,
        now: u64,
        subject: Subject,
        alert: &Alert,
    ) -> io::Result<String> {
        let verdict = (alert.detector(), alert.rule(), alert.severity());
        let offender = alert.offender_pid();
        let lineage = self.table.lineage();
        let (id, told) = self
            .incidents
            .raise(now, verdict, subject, offender, |a, b| {
                same_runaway(lineage, a, b)
            });
        if told != Told::Repeat {
            let record = alert.told(&id, told == Told::Update);
            self.out.record(&record)?;
            let subject = self.incidents.get(&id).map(|i| i.subject.clone());
            if let Some(subject) = subject {
                self.report_alert(&id, &record, told == Told::New, &subject, now);
            }
        }
        Ok(id)
    }

    /// Actions leaving the pipeline for the agent to run: their incidents
    /// stay open until each is reported.
    pub(super) fn incident_requested(&mut self, requests: &[ActionRequest], now: u64) {
        for id in requests.iter().filter_map(|r| r.incident.as_deref()) {
            self.incidents.requested(id, now);
        }
    }

    /// An action of an incident finished.
    pub(super) fn incident_acted(
        &mut self,
        id: Option<&str>,
        now: u64,
        contained: bool,
        refusing: bool,
    ) {
        if let Some(id) = id {
            self.incidents.acted(id, now, contained, refusing);
        }
    }

    /// A refusal of an incident ended: `why` ends the incident too
    /// (`None`: the containment that follows goes on with it).
    pub(super) fn incident_refusal_ended(
        &mut self,
        id: Option<&str>,
        now: u64,
        why: Option<Ended>,
    ) -> io::Result<()> {
        let closed = id.and_then(|id| self.incidents.refusal_ended(id, now, why));
        self.resolve(closed.into_iter().collect(), None)
    }

    /// Ends `id` now (a blocked-task storm that is over, with its peak).
    pub(super) fn close_incident(
        &mut self,
        id: &str,
        now: u64,
        ended: Ended,
        peak: Option<u64>,
    ) -> io::Result<()> {
        let closed = self.incidents.close(id, now, ended);
        self.resolve(closed.into_iter().collect(), peak)
    }

    /// Every tick: ends the incidents that are over.
    pub(super) fn expire_incidents(&mut self, now: u64) -> io::Result<()> {
        let quiet: Vec<(Detector, u64)> = Detector::ALL
            .into_iter()
            .map(|d| (d, 2 * self.repeats_within(d) + 1_000_000_000))
            .collect();
        let lineage = self.table.lineage();
        let protection = &self.protection;
        let system = self.system.clone();
        let table = &self.table;
        let closed = self.incidents.expire(
            now,
            |d| quiet.iter().find(|q| q.0 == d).map_or(BACKSTOP_NS, |q| q.1),
            |subject| match subject {
                Subject::Lineage {
                    node: Some(node), ..
                } => unprotected_members(lineage, protection, *node).is_empty(),
                Subject::Lineage { node: None, tag } => system.as_ref().is_some_and(|s| {
                    !s.tagged(*tag)
                        .into_iter()
                        .any(|t| matches!(s.state(t), ProcState::Running | ProcState::Stopped))
                }),
                Subject::Loop { supervisor, .. } => table.get(*supervisor).is_none(),
                Subject::Cgroup(_) | Subject::Host => false,
            },
        );
        self.resolve(closed, None)
    }

    /// Ends every open incident: the agent stops.
    pub fn close_incidents(&mut self, now: u64) -> io::Result<()> {
        let closed = self.incidents.close_all(now);
        self.resolve(closed, None)?;
        self.out.flush_records()
    }

    fn resolve(&mut self, closed: Vec<Closed>, peak: Option<u64>) -> io::Result<()> {
        for c in &closed {
            let record = Resolved::of(c, peak);
            self.out.record(&record)?;
            if let Ok(mut value) = serde_json::to_value(&record) {
                if let Some(o) = value.as_object_mut() {
                    o.insert("kind".into(), "resolved".into());
                }
                self.report_resolved(&c.incident.id, value);
            }
        }
        Ok(())
    }

    /// The longest `detector`'s rule goes without repeating a verdict on a
    /// runaway that goes on.
    fn repeats_within(&self, detector: Detector) -> u64 {
        match detector {
            Detector::Fork => self.detectors.fork.rules().window_ns.max(REALERT_NS),
            Detector::Memory => self.detectors.memory.rules().window_ns,
            Detector::Blocked => BACKSTOP_NS,
            Detector::Leak | Detector::Crashloop => self
                .plugins
                .iter()
                .find(|p| p.detector() == detector)
                .map_or(BACKSTOP_NS, |p| p.repeats_within()),
        }
    }
}

/// Whether two subjects are one runaway: the same cgroup, loop or host; a
/// subtree and the same subtree, one inside it, or one it is inside (the
/// fork probe's condemnation and the agent's rule may name a subtree at
/// different roots), or under the same kernel tag.
fn same_runaway(lineage: &crate::host::proctable::Lineage, a: &Subject, b: &Subject) -> bool {
    match (a, b) {
        (Subject::Lineage { node: x, tag: s }, Subject::Lineage { node: y, tag: t }) => {
            if s == t {
                return true;
            }
            let (Some(x), Some(y)) = (x, y) else {
                return false;
            };
            let within = |inner: NodeId, outer: NodeId| {
                inner == outer
                    || lineage
                        .ancestors(inner)
                        .take(ANCESTRY_DEPTH)
                        .any(|(id, _)| id == outer)
            };
            within(*x, *y) || within(*y, *x)
        }
        _ => a == b,
    }
}
