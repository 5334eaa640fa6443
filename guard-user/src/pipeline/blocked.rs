//! The blocked-task glue: snapshots of the kernel's map turned into
//! records, and a storm's memory runaway.

use super::*;
use crate::output::incident::Ended;
use crate::output::record;

/// Reclaim stalls this recent count as memory pressure for a storm.
const RECENT_RECLAIM_NS: u64 = 10_000_000_000;

impl<W: Write> Pipeline<W> {
    /// Why a blocked-task storm looks like memory pressure: the host's PSI,
    /// recent reclaim stalls, pools past the headroom line.
    pub(super) fn storm_pressure(&self, now: u64) -> Vec<String> {
        let mut reasons = Vec::new();
        if let Some(p) = self.host.memory_pressure()
            && p.full_avg10 >= PSI_FULL_PRESSURE
        {
            reasons.push(format!(
                "memory PSI full avg10 {:.1}% (every task stalled on memory)",
                p.full_avg10
            ));
        }
        if let Some(at) = self.last_reclaim_stall_ns
            && now.saturating_sub(at) <= RECENT_RECLAIM_NS
        {
            reasons.push(format!(
                "reclaim stalls, the last {} ago",
                human_duration(now.saturating_sub(at))
            ));
        }
        for (pool, pct) in self.detectors.memory.near_limit() {
            reasons.push(format!("{pool} at {pct:.0}% of its memory limit"));
        }
        reasons
    }

    /// The memory runaway a storm under pressure is blamed on, as an
    /// action of the memory detector's policy.
    pub(super) fn storm_runaway(&mut self, now: u64) -> Option<ActionRequest> {
        let (pool, usage, growers) = self.detectors.memory.runaway(now)?;
        let mut request = self.memory_request(
            now,
            Detector::Blocked,
            Rule::BlockedStorm,
            &pool,
            usage.unreclaimable,
            &growers,
        )?;
        if let Some(Offender::Known(o)) = &mut request.offender {
            o.memory_cgroup = Some(pool.to_string());
        }
        Some(request)
    }

    /// Feeds the blocked-task rule the kernel's `BLOCKED` map as read now:
    /// reports tasks past the threshold (with where they wait), releases,
    /// and storms. Returns what the kernel's maps need.
    pub fn sample_blocked(
        &mut self,
        now: u64,
        tasks: &[BlockedTask],
    ) -> io::Result<BlockedBookkeeping> {
        if !self.settings.runs(Detector::Blocked) {
            return Ok(BlockedBookkeeping::default());
        }
        let ignore = &self.settings.ignore_blocked;
        let in_scope: Vec<BlockedTask> = tasks
            .iter()
            .filter(|t| {
                let process = self.table.get(t.tgid);
                let program = process
                    .and_then(|p| self.table.lineage().get(p.node))
                    .and_then(|n| n.exe.clone());
                let cgroup = process.and_then(|p| p.cgroup(self.primary));
                self.scope.contains(process)
                    && !ignore.matches(program.as_deref(), cgroup.map(|c| &**c))
            })
            .cloned()
            .collect();
        let changes = self.detectors.blocked.snapshot(now, &in_scope);
        let book = self.report_changes(now, &changes)?;
        match self.detectors.blocked.check(now) {
            Some(storm @ BlockedVerdict::Storm { .. }) => self.storm_alert(now, storm)?,
            Some(BlockedVerdict::StormOver { peak, .. }) => {
                let storm = self
                    .incidents
                    .open()
                    .find(|i| i.detector == Detector::Blocked && i.subject == Subject::Host)
                    .map(|i| i.id.clone());
                if let Some(id) = storm {
                    self.close_incident(&id, now, Ended::Subsided, Some(peak as u64))?;
                }
            }
            None => {}
        }
        self.out.flush()?;
        Ok(book)
    }

    /// A storm's alert: with memory pressure, its offender is the memory
    /// runaway (and the memory action applies); without, nobody.
    fn storm_alert(&mut self, now: u64, storm: BlockedVerdict) -> io::Result<()> {
        let BlockedVerdict::Storm {
            count,
            killable,
            pids,
            shared,
            longest_ns,
        } = storm
        else {
            return Ok(());
        };
        let pressure = self.storm_pressure(now);
        let runaway = if pressure.is_empty() {
            None
        } else {
            self.storm_runaway(now)
        };
        let note = match (&runaway, pressure.is_empty()) {
            (_, true) => {
                "tasks in D state cannot be killed: guard reports the storm and acts on nothing"
            }
            (Some(_), false) => {
                "the storm comes with memory pressure: its offender is the memory runaway, \
                 and --mem-action applies to it (tasks in D state cannot be killed)"
            }
            (None, false) => {
                "the storm comes with memory pressure, but no unprotected process grew \
                 in scope (tasks in D state cannot be killed)"
            }
        };
        let mut blame = match &runaway {
            Some(request) => Blame::on(request.offender.clone(), request.kind),
            None => Blame::on(None, ActionKind::Log),
        };
        blame.note = Some(note.to_owned());
        let alert = Alert::BlockedStorm(record::StormAlert {
            detector: Detector::Blocked,
            rule: Rule::BlockedStorm,
            count: count as u64,
            killable: killable as u64,
            threshold_secs: self.detectors.blocked.rules().threshold_ns as f64 / 1e9,
            longest_ms: longest_ns / 1_000_000,
            shared_wait: shared.map(|s| record::SharedWait {
                frames: s.frames,
                tasks: s.tasks as u64,
            }),
            memory_pressure: record::StormPressure {
                psi: self.host.memory_pressure().map(|p| record::Psi {
                    full_avg10: p.full_avg10,
                    some_avg10: p.some_avg10,
                }),
                reasons: pressure,
            },
            pids,
            blame,
        });
        let incident = self.raise(now, Subject::Host, &alert)?;
        match runaway {
            Some(request) => self.queue(ActionRequest {
                incident: Some(incident),
                ..request
            }),
            None => Ok(()),
        }
    }

    /// Tasks that crossed the threshold (with where they wait) and those
    /// released without the probe's record.
    fn report_changes(
        &mut self,
        now: u64,
        changes: &crate::detect::blocked::Changes,
    ) -> io::Result<BlockedBookkeeping> {
        let mut book = BlockedBookkeeping::default();
        for task in &changes.crossed {
            let wait = self.host.task_wait(task.tgid, task.pid);
            let process = self.table.get(task.tgid);
            self.out.record(&record::Blocked {
                pid: task.pid,
                tgid: task.tgid,
                comm: task.comm.to_string(),
                cgroup: process
                    .and_then(|p| p.cgroup(self.primary))
                    .map(|c| c.to_string()),
                kernel_thread: process.is_some_and(|p| p.kernel_thread),
                since_ns: task.since_ns,
                blocked_ms: now.saturating_sub(task.since_ns) / 1_000_000,
                killable: task.killable,
                wchan: wait.wchan.clone(),
                stack: wait.frames.clone(),
            })?;
            self.detectors.blocked.report(now, task, wait);
            book.watch.push((task.task, task.since_ns));
        }
        for released in &changes.released {
            self.out.record(&record::UnblockedSeen {
                pid: released.pid,
                since_ns: released.since_ns,
                blocked_ms: released.blocked_ns / 1_000_000,
                killable: released.killable,
                approximate: true,
            })?;
            book.forget.push(released.task);
        }
        Ok(book)
    }
}
