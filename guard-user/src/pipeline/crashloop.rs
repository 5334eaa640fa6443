//! The crash-loop glue: alerts, and the supervisor a loop may stop.

use super::*;
use crate::output::record::{CrashLoopAlert, Supervisor};

impl<W: Write> Pipeline<W> {
    /// Why the supervisor of a crash loop must not be stopped; `None` when
    /// it may be (see `--crashloop-action`): only the live process that
    /// started the crashing program again and again, never one that only
    /// adopted orphans (a subreaper, init).
    pub(super) fn supervisor_spared(&self, l: &CrashLoop) -> Option<&'static str> {
        if l.orphaned {
            return Some(
                "the program died an orphan: its parent then only adopted it (inheriting \
                 orphans is not restarting)",
            );
        }
        let supervisor = l.key.supervisor;
        let Some(p) = self.table.get(supervisor) else {
            return Some("the supervisor is unknown");
        };
        let Some(node) = self.table.lineage().get(p.node) else {
            return Some("the supervisor is unknown");
        };
        // Service managers and session daemons are protected by name (see
        // `protect::SUPERVISORS`): stopping one would stop all it runs.
        self.protection.why(node)
    }

    pub(super) fn crash_loop_alert(&mut self, l: &CrashLoop) -> io::Result<()> {
        let statuses: Vec<String> = l
            .statuses
            .iter()
            .map(|s| match s {
                ExitStatus::Exited(code) => format!("exit {code}"),
                ExitStatus::Signaled { signal, .. } => {
                    crate::output::signal_name(*signal).to_owned()
                }
            })
            .collect();
        let supervisor = self.table.get(l.key.supervisor).map(|p| p.comm.to_string());
        let (action, spared) = match self
            .settings
            .action(Detector::Crashloop, l.key.cgroup.as_deref())
        {
            ActionKind::Log => (ActionKind::Log, None),
            kind => match self.supervisor_spared(l) {
                Some(why) => (ActionKind::Log, Some(why)),
                None => (kind, None),
            },
        };
        self.out.record(&Alert::CrashLoop(CrashLoopAlert {
            detector: Detector::Crashloop,
            rule: Rule::CrashLoop,
            program: l.key.program.to_string(),
            cgroup: l.key.cgroup.as_deref().map(str::to_owned),
            unit: l
                .key
                .cgroup
                .as_deref()
                .and_then(systemd_unit)
                .map(str::to_owned),
            supervisor: Supervisor {
                comm: supervisor,
                pid: l.key.supervisor,
            },
            crashes: u64::from(l.crashes),
            window_secs: l.window_ns / 1_000_000_000,
            per_minute: (l.per_minute * 10.0).round() / 10.0,
            statuses,
            last_pid: l.last_pid,
            action,
            not_stopped_because: spared.map(str::to_owned),
        }))?;
        if action == ActionKind::Log {
            return Ok(());
        }
        let Some(node) = self.table.get(l.key.supervisor).map(|p| p.node) else {
            return Ok(());
        };
        let request = ActionRequest {
            detector: Detector::Crashloop,
            rule: Rule::CrashLoop,
            tag: node,
            root: Some(node),
            kind: action,
            offender: self.describe_offender(node, 1),
            members: vec![Member {
                tgid: l.key.supervisor,
                born_ns: self.table.lineage().get(node).map_or(0, |n| n.born_ns),
            }],
            pool: None,
            follow_ups: 0,
        };
        self.queue(request)
    }
}
