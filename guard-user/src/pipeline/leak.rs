//! The leak rule's glue: its alert with the projections, and the action.

use super::*;
use crate::output::record::{LeakAlert, Resource};

impl<W: Write> Pipeline<W> {
    /// Writes a leak alert, with its projection toward whichever limit
    /// comes first, and queues the action it leads to.
    pub(super) fn leak_alert(&mut self, v: &crate::detect::leak::LeakVerdict) -> io::Result<()> {
        let recent = self.detectors.fork.recent(&v.cgroup);
        let ignore = &self.settings.ignore_leak;
        let protection = &self.protection;
        let offender = find_offender(self.table.lineage(), &recent, |n| {
            protection
                .why(n)
                .or_else(|| ignore.program(n.exe.as_deref()).then_some("ignored"))
        });
        let per_sec = v.per_min / 60.0;
        let pids_eta = v
            .limit
            .filter(|_| per_sec > 0.0)
            .map(|limit| limit.saturating_sub(v.now) as f64 / per_sec);
        // Memory: the pool the leaking processes count against, at the
        // memory each task holds now.
        let pool = offender
            .as_ref()
            .and_then(|o| self.table.lineage().get(o.node))
            .map(|n| n.cgroups.clone());
        let pool = match pool {
            Some(cgroups) => self
                .pool_of(&cgroups)
                .unwrap_or_else(|| PoolKey::from(HOST)),
            None => PoolKey::from(HOST),
        };
        let memory = if &*pool == HOST {
            observe::host_memory()
        } else {
            observe::memcg_usage(&pool)
        };
        let memory_eta = memory.filter(|_| v.now > 0 && per_sec > 0.0).map(|m| {
            let per_task = m.unreclaimable as f64 / v.now as f64;
            m.limit.saturating_sub(m.unreclaimable) as f64 / (per_task * per_sec).max(1.0)
        });
        let first = match (pids_eta, memory_eta) {
            (Some(p), Some(m)) => Some(if p <= m {
                Resource::Pids
            } else {
                Resource::Memory
            }),
            (Some(_), None) => Some(Resource::Pids),
            (None, Some(_)) => Some(Resource::Memory),
            (None, None) => None,
        };
        let round = |s: Option<f64>| s.map(|s| (s * 10.0).round() / 10.0);
        let alert = |blame| {
            Alert::Leak(LeakAlert {
                detector: Detector::Leak,
                rule: Rule::Leak,
                cgroup: v.cgroup.to_string(),
                tasks_now: v.now,
                tasks_before: v.before,
                window_secs: v.window_ns / 1_000_000_000,
                per_min: (v.per_min * 10.0).round() / 10.0,
                pids_limit: v.limit,
                pids_eta_secs: round(pids_eta),
                memory_pool: pool.to_string(),
                memory_bytes: memory.map(|m| m.unreclaimable),
                memory_limit_bytes: memory.map(|m| m.limit),
                memory_eta_secs: round(memory_eta),
                runs_out_first: first,
                blame,
            })
        };
        let Some(offender) = offender else {
            return self.out.record(&alert(Blame {
                offender: None,
                action: None,
                note: None,
            }));
        };
        let members = unprotected_members(self.table.lineage(), &self.protection, offender.node);
        let described = self.describe_offender(offender.node, members.len());
        let action = self.settings.action(Detector::Leak, Some(&v.cgroup));
        self.out
            .record(&alert(Blame::on(described.clone(), action)))?;
        if action == ActionKind::Log || members.is_empty() {
            return Ok(());
        }
        self.queue(ActionRequest {
            detector: Detector::Leak,
            rule: Rule::Leak,
            tag: offender.node,
            root: Some(offender.node),
            kind: action,
            offender: described,
            members,
            pool: None,
            follow_ups: 0,
        })
    }
}
