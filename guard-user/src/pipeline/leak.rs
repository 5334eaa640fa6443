//! The leak detector as a plugin: the rule (`detect::leak`) fed with each
//! tick's task counts; its alert with the projections to whichever limit
//! comes first, and the action on the subtree behind the growth.

use super::{
    plugin::{PidsReading, Plugin, Verdict, View},
    *,
};
use crate::{
    detect::leak::{LeakDetector, LeakVerdict},
    output::incident::Subject,
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
        let eta = |room: u64, per_sec: f64| (per_sec > 0.0).then(|| room as f64 / per_sec);
        let pids_eta = v
            .limit
            .and_then(|limit| eta(limit.saturating_sub(v.now), per_sec));
        // Memory: the pool the leaking processes count against, at the
        // memory each member of the subtree holds now.
        let members = offender
            .as_ref()
            .map(|o| unprotected_members(lineage, view.protection, o.node))
            .unwrap_or_default();
        let pool = offender
            .as_ref()
            .and_then(|o| lineage.get(o.node))
            .and_then(|n| view.pool_of(&n.cgroups))
            .unwrap_or_else(|| PoolKey::from(HOST));
        let memory = view.host.pool_usage(&pool);
        let per_task = per_member_memory(view, &members);
        let memory_eta = memory.zip(per_task).and_then(|(m, each)| {
            eta(
                m.limit.saturating_sub(m.unreclaimable),
                each.max(1) as f64 * per_sec,
            )
        });
        // The host's task table, which every task on it counts against.
        let host = view.host.host_pids();
        let host_eta = host.and_then(|(tasks, limit)| eta(limit.saturating_sub(tasks), per_sec));
        let first = [
            (Resource::Pids, pids_eta),
            (Resource::Memory, memory_eta),
            (Resource::HostTasks, host_eta),
        ]
        .into_iter()
        .filter_map(|(r, eta)| Some((r, eta?)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(r, _)| r);
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
                memory_per_task_bytes: per_task,
                memory_eta_secs: round(memory_eta),
                host_tasks: host.map(|h| h.0),
                host_tasks_limit: host.map(|h| h.1),
                host_tasks_eta_secs: round(host_eta),
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
                subject: Subject::Cgroup(v.cgroup.to_string()),
                action: None,
            };
        };
        let described = view.describe(offender.node, members.len());
        let cgroups = lineage.get(offender.node).map(|n| n.cgroups.to_vec());
        let action = view.settings.action_of(
            Detector::Leak,
            Some(&v.cgroup),
            &cgroups.unwrap_or_default(),
        );
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
            incident: None,
        });
        Verdict {
            alert: alert(Blame::on(described, action)),
            subject: Subject::Lineage {
                node: Some(offender.node),
                tag: offender.node,
            },
            action: request,
        }
    }
}

/// Members' memory read at most: enough for an average.
const MEMBERS_SAMPLED: usize = 64;

/// The memory (anon + shmem) a member holds, on average over up to
/// [`MEMBERS_SAMPLED`] of them; `None` when none could be read.
fn per_member_memory(view: &View<'_>, members: &[Member]) -> Option<u64> {
    let step = (members.len() / MEMBERS_SAMPLED).max(1);
    let read: Vec<u64> = members
        .iter()
        .step_by(step)
        .take(MEMBERS_SAMPLED)
        .filter_map(|m| view.host.process_unreclaimable(m.tgid))
        .collect();
    (!read.is_empty()).then(|| read.iter().sum::<u64>() / read.len() as u64)
}

impl Plugin for LeakWatch {
    fn repeats_within(&self) -> u64 {
        self.rule.rules().window_ns
    }

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
