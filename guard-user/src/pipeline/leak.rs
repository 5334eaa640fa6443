//! The leak detector as a plugin: the rule (`detect::leak`) fed with each
//! tick's task counts; its alert with the projections to whichever limit
//! comes first, and the action on the subtree behind the growth.

use super::{
    plugin::{PidsReading, Plugin, Verdict, View},
    *,
};
use crate::{
    detect::leak::{LeakDetector, LeakVerdict},
    output::record::{LeakAlert, Resource},
};

pub struct LeakWatch {
    rule: LeakDetector,
}

impl LeakWatch {
    pub fn new(rule: LeakDetector) -> Self {
        Self { rule }
    }

    fn verdict(&self, view: &View<'_>, v: &LeakVerdict) -> Verdict {
        let recent = view.fork.recent(&v.cgroup);
        let lineage = view.table.lineage();
        let offender = find_offender(lineage, &recent, |n| view.spared(Detector::Leak, n));
        let per_sec = v.per_min / 60.0;
        let pids_eta = v
            .limit
            .filter(|_| per_sec > 0.0)
            .map(|limit| limit.saturating_sub(v.now) as f64 / per_sec);
        // Memory: the pool the leaking processes count against, at the
        // memory each task holds now.
        let pool = offender
            .as_ref()
            .and_then(|o| lineage.get(o.node))
            .and_then(|n| view.pool_of(&n.cgroups))
            .unwrap_or_else(|| PoolKey::from(HOST));
        let memory = view.host.pool_usage(&pool);
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
            return Verdict {
                alert: alert(Blame {
                    offender: None,
                    action: None,
                    note: None,
                }),
                action: None,
            };
        };
        let members = unprotected_members(lineage, view.protection, offender.node);
        let described = view.describe(offender.node, members.len());
        let action = view.settings.action(Detector::Leak, Some(&v.cgroup));
        let request = (action != ActionKind::Log && !members.is_empty()).then(|| ActionRequest {
            detector: Detector::Leak,
            rule: Rule::Leak,
            tag: offender.node,
            root: Some(offender.node),
            kind: action,
            offender: described.clone(),
            members,
            pool: None,
            follow_ups: 0,
        });
        Verdict {
            alert: alert(Blame::on(described, action)),
            action: request,
        }
    }
}

impl Plugin for LeakWatch {
    fn detector(&self) -> Detector {
        Detector::Leak
    }

    fn pids(&mut self, _view: &View<'_>, now: u64, readings: &[PidsReading]) {
        for r in readings {
            self.rule.sample(now, &r.cgroup, r.current, r.limit);
        }
    }

    fn check(&mut self, view: &View<'_>, now: u64) -> Vec<Verdict> {
        self.rule
            .check(now)
            .iter()
            .filter(|v| !view.settings.ignore_leak.cgroup(Some(&v.cgroup)))
            .map(|v| self.verdict(view, v))
            .collect()
    }
}
