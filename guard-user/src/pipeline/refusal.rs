//! Glue for refusals in force (`respond::refusal` holds the rule): starts
//! one when a `refuse` action is in place, reads the kernel's counts every
//! second, writes `refusal` records, lifts what ended, and hands the
//! ladder's next step to the agent.

use std::io::{self, Write};

use crate::{
    output::incident::Ended as IncidentEnded,
    output::record::RefusalRecord,
    pipeline::{ActionRequest, Pipeline},
    respond::act::{Outcome, ProcState},
    respond::refusal::{Ended, Figures},
};

impl<W: Write> Pipeline<W> {
    /// A `refuse` action finished: from now on its lineage is watched.
    /// Returns whether it is (the refusal is in force).
    pub(super) fn refusal_started(
        &mut self,
        request: &ActionRequest,
        outcome: &Outcome,
        now: u64,
    ) -> bool {
        if !request.kind.refuses() || !outcome.refusing {
            return false;
        }
        if !self.refusals.contains(request.tag) {
            self.refusals
                .start(request.tag, request.clone(), request.kind.then(), now);
        }
        true
    }

    /// Every second: how each refusal goes. Returns the ladder's next
    /// steps, for the agent to run.
    pub fn watch_refusals(&mut self, now: u64) -> io::Result<Vec<ActionRequest>> {
        if self.refusals.is_empty() {
            return Ok(Vec::new());
        }
        let Some(system) = self.system.clone() else {
            return Ok(Vec::new());
        };
        let changes = self.refusals.observe(
            now,
            |tag| system.refusal(tag),
            |tag| {
                system
                    .tagged(tag)
                    .into_iter()
                    .filter(|&t| matches!(system.state(t), ProcState::Running | ProcState::Stopped))
                    .count()
            },
        );
        let mut steps = Vec::new();
        for (tag, figures, ended) in changes {
            let subject = match ended {
                Some(request) => request,
                None => match self.refusals.subject(tag) {
                    Some(request) => request.clone(),
                    None => continue,
                },
            };
            self.out.record(&refusal_record(&subject, &figures))?;
            match (figures.ended, figures.then) {
                (Some(Ended::Escalated), Some(then)) => {
                    // The refusal stays until the step's own containment
                    // releases it: no member forks in between.
                    steps.push(ActionRequest {
                        kind: then,
                        follow_ups: 0,
                        ..subject
                    });
                }
                (Some(why), _) => {
                    if why != Ended::Released {
                        system.lift(tag);
                    }
                    self.active.remove(&tag);
                    self.incident_refusal_ended(
                        subject.incident.as_deref(),
                        now,
                        incident_end(why),
                    )?;
                }
                (None, _) => {}
            }
        }
        self.incident_requested(&steps, now);
        self.out.flush_records()?;
        Ok(steps)
    }

    /// Ends every refusal now: an operator lifted them (SIGUSR2), or the
    /// agent stops.
    pub fn end_refusals(&mut self, now: u64, why: Ended) -> io::Result<usize> {
        let ended = self.refusals.end_all(now, why);
        let count = ended.len();
        for (tag, figures, request) in ended {
            if let Some(system) = &self.system {
                system.lift(tag);
            }
            self.active.remove(&tag);
            self.out.record(&refusal_record(&request, &figures))?;
            self.incident_refusal_ended(request.incident.as_deref(), now, incident_end(why))?;
        }
        self.out.flush_records()?;
        Ok(count)
    }
}

/// What a refusal's end makes of its incident: over (`None`: it goes on,
/// with the containment that released the refusal, or the ladder's step).
fn incident_end(why: Ended) -> Option<IncidentEnded> {
    match why {
        Ended::Gone => Some(IncidentEnded::Gone),
        Ended::Expired | Ended::Lifted => Some(IncidentEnded::Lifted),
        Ended::AgentStopped => Some(IncidentEnded::AgentStopped),
        Ended::Released | Ended::Escalated => None,
    }
}

fn refusal_record(request: &ActionRequest, f: &Figures) -> RefusalRecord {
    RefusalRecord {
        incident: request.incident.clone(),
        detector: request.detector,
        rule: request.rule,
        state: f.state,
        ended: f.ended,
        then: f.then,
        offender: request.offender.clone(),
        refused: f.refused,
        slipped: f.slipped,
        per_second: (f.per_second * 10.0).round() / 10.0,
        peak_per_second: (f.peak_per_second * 10.0).round() / 10.0,
        first_refused_boot_ns: f.first_refused_ns,
        last_refused_boot_ns: f.last_refused_ns,
        refusing_secs: (f.refusing_ns as f64 / 1e8).round() / 10.0,
        members: f.members,
    }
}
