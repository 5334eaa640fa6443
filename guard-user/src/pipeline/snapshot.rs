//! The `snapshot` record: what the pipeline sees now, for the `--socket`
//! stream (`guard top`). Read-only: it changes nothing it reads.

use std::io::Write;

use super::Pipeline;
use crate::{
    detect::fork::find_offender,
    output::record::{AgentState, BlockedState, PidsState, PoolState, Snapshot, Suspect},
};

/// Orders by time to the limit (soonest first, none last), then by growth.
fn soonest(a: Option<f64>, b: Option<f64>) -> std::cmp::Ordering {
    match (a, b) {
        (Some(a), Some(b)) => a.total_cmp(&b),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    }
}

impl<W: Write> Pipeline<W> {
    /// Open incidents now.
    pub fn incidents_open(&self) -> usize {
        self.incidents.open().count()
    }

    /// What the pipeline sees at `now`, with the agent's health as given.
    pub fn snapshot(&self, now: u64, agent: AgentState) -> Snapshot {
        let lineage = self.table.lineage();
        let mut pids: Vec<PidsState> = self
            .detectors
            .fork
            .pids_views()
            .into_iter()
            .map(|v| {
                // Named only while the cgroup grows: a steady one has
                // nobody to act on.
                let recent = if v.per_sec > 0.0 {
                    self.detectors.fork.recent(&v.cgroup)
                } else {
                    Vec::new()
                };
                let offender = find_offender(lineage, &recent, |n| self.protection.why(n))
                    .and_then(|o| {
                        let n = lineage.get(o.node)?;
                        Some(Suspect {
                            pid: n.tgid,
                            comm: n.comm.to_string(),
                            exe: n.exe.as_deref().map(str::to_owned),
                            subtree_size: lineage.live_descendants(o.node).len(),
                        })
                    });
                PidsState {
                    cgroup: v.cgroup.to_string(),
                    tasks: v.current,
                    limit: v.limit,
                    per_sec: v.per_sec,
                    births_per_sec: self.detectors.fork.births_per_sec(&v.cgroup, now),
                    eta_secs: v.eta_secs,
                    offender,
                }
            })
            .collect();
        pids.sort_by(|a, b| {
            soonest(a.eta_secs, b.eta_secs)
                .then(b.per_sec.total_cmp(&a.per_sec))
                .then(b.tasks.cmp(&a.tasks))
        });
        let mut memory: Vec<PoolState> = self
            .detectors
            .memory
            .pool_views()
            .into_iter()
            .map(|(pool, usage, eta)| PoolState {
                pool: pool.to_string(),
                bytes: usage.unreclaimable,
                limit_bytes: usage.limit,
                eta_secs: eta,
            })
            .collect();
        memory.sort_by(|a, b| soonest(a.eta_secs, b.eta_secs).then(b.bytes.cmp(&a.bytes)));
        let blocked = self
            .detectors
            .blocked
            .reported()
            .into_iter()
            .map(|(pid, comm, since, wchan)| BlockedState {
                pid,
                comm: comm.to_string(),
                blocked_ms: now.saturating_sub(since) / 1_000_000,
                wchan: wchan.map(str::to_owned),
            })
            .collect();
        Snapshot {
            pids,
            memory,
            blocked,
            agent,
        }
    }
}
