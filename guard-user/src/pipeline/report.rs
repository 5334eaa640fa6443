//! Glue for incident reports (`output::report` holds the report, its
//! writer and its rendering): the per-cgroup history every event feeds,
//! each open incident's decision, the subtree at the request (before the
//! action thread signals anything), the outcome after, and how it ended.

use std::{collections::HashMap, io::Write};

use serde_json::Value;

use super::{ActionRequest, Pipeline};
use crate::{
    detect::memory::HOST,
    host::proctable::{NodeId, ProcInfo},
    kernel::decode::Event,
    output::{
        incident::Subject,
        record::AlertRecord,
        report::{History, Report, Reports, TREE_MEMBERS, TreeMember},
    },
    respond::act::{Member, Outcome},
};

/// What the pipeline keeps for reports.
pub struct ReportBook {
    writer: Reports,
    history: History,
    /// Open incidents' newest alert record.
    alerts: HashMap<String, Value>,
    /// Reports of incidents acted on and not ended yet.
    drafts: HashMap<String, Report>,
    /// `--incident-alerts`: a report for every new incident.
    alerts_too: bool,
}

impl ReportBook {
    pub fn new(writer: Reports, alerts_too: bool) -> Self {
        Self {
            writer,
            history: History::default(),
            alerts: HashMap::new(),
            drafts: HashMap::new(),
            alerts_too,
        }
    }
}

impl<W: Write> Pipeline<W> {
    /// Writes the reports still queued and ends their writer (after the
    /// last incident is resolved).
    pub fn close_reports(&mut self) {
        if let Some(book) = self.reports.take() {
            let lost = book.writer.lost.load(std::sync::atomic::Ordering::Relaxed);
            book.writer.close();
            if lost > 0 {
                tracing::warn!("{lost} incident reports were not written");
            }
        }
    }

    /// Writes incident reports through `book` from now on.
    pub fn with_reports(mut self, book: ReportBook) -> Self {
        self.reports = Some(book);
        self
    }

    /// Adds a process-level fork, exec or exit to its cgroup's history.
    pub(super) fn note_history(&mut self, event: &Event, subject: Option<&ProcInfo>) {
        let (Some(book), Some(p)) = (&mut self.reports, subject) else {
            return;
        };
        if !matches!(event, Event::Fork(_) | Event::Exec(_) | Event::Exit(_))
            || event.is_thread_level()
        {
            return;
        }
        if let Some(cgroup) = p.cgroup(self.primary) {
            book.history.push(
                cgroup,
                event.boot_ns(),
                event.kind().name(),
                p.tgid,
                p.ppid,
                p.comm,
            );
        }
    }

    /// An alert was written for incident `id`: it is the decision its
    /// report shows. A new incident gets a report at once under
    /// `--incident-alerts`.
    pub(super) fn report_alert(
        &mut self,
        id: &str,
        record: &AlertRecord<'_>,
        new: bool,
        subject: &Subject,
        now: u64,
    ) {
        let Some(book) = &mut self.reports else {
            return;
        };
        let Ok(mut value) = serde_json::to_value(record) else {
            return;
        };
        if let Some(o) = value.as_object_mut() {
            o.insert("kind".into(), "alert".into());
        }
        book.alerts.insert(id.to_owned(), value);
        if new && book.alerts_too && !book.drafts.contains_key(id) {
            let node = match subject {
                Subject::Lineage { node, .. } => *node,
                Subject::Loop { supervisor, .. } => self.table.get(*supervisor).map(|p| p.node),
                Subject::Cgroup(_) | Subject::Host => None,
            };
            let report = self.draft(id, node, &[], None, now);
            if let Some(book) = &self.reports {
                book.writer.write(&report);
            }
        }
    }

    /// Whether reports are written.
    pub fn reports_on(&self) -> bool {
        self.reports.is_some()
    }

    /// Actions just handed to the action thread: each incident's first one
    /// starts its report, with the subtree as the table had it at the
    /// verdict (the table has taken no event since). Called after the
    /// hand-over, so that building a report never delays a signal.
    pub fn report_requested(&mut self, requests: &[ActionRequest], now: u64) {
        if self.reports.is_none() {
            return;
        }
        for r in requests.iter().filter(|r| r.follow_ups == 0) {
            let Some(id) = r.incident.as_deref() else {
                continue;
            };
            if self
                .reports
                .as_ref()
                .is_some_and(|b| b.drafts.contains_key(id))
            {
                continue;
            }
            let report = self.draft(id, r.root, &r.members, r.pool.as_ref().map(|p| &*p.0), now);
            if let Some(book) = &mut self.reports {
                book.drafts.insert(id.to_owned(), report);
            }
        }
    }

    /// An action finished: its record, what was read of each member before
    /// the first signal, who was signalled, and the cgroup after.
    pub(super) fn report_acted(
        &mut self,
        request: &ActionRequest,
        outcome: &Outcome,
        record: Value,
    ) {
        let Some(id) = request.incident.as_deref() else {
            return;
        };
        let Some(mut report) = self.reports.as_mut().and_then(|b| b.drafts.remove(id)) else {
            return;
        };
        for member in &mut report.tree {
            if let Some((_, d)) = outcome.captured.iter().find(|(pid, _)| *pid == member.pid) {
                member.uid = d.uid;
                member.state.clone_from(&d.state);
                member.rss_bytes = d.rss_bytes;
                member.swap_bytes = d.swap_bytes;
            }
            if outcome.signalled_pids.contains(&member.pid) {
                member.signalled = true;
            }
        }
        let known: std::collections::HashSet<u32> = report.tree.iter().map(|m| m.pid).collect();
        for &pid in outcome.signalled_pids.iter().filter(|p| !known.contains(p)) {
            let mut m = self.member_of_pid(pid);
            if let Some((_, d)) = outcome.captured.iter().find(|(p, _)| *p == pid) {
                m.uid = d.uid;
                m.state.clone_from(&d.state);
                m.rss_bytes = d.rss_bytes;
                m.swap_bytes = d.swap_bytes;
            }
            m.signalled = true;
            m.joined = true;
            report.tree.push(m);
        }
        report.actions.push(record);
        report.cgroup_after = self.files_of(
            report.cgroup.as_deref(),
            request.pool.as_ref().map(|p| &*p.0),
        );
        if let Some(book) = &mut self.reports {
            book.writer.write(&report);
            book.drafts.insert(id.to_owned(), report);
        }
    }

    /// Incident `id` ended with `record`: its report is final.
    pub(super) fn report_resolved(&mut self, id: &str, record: Value) {
        let Some(book) = &mut self.reports else {
            return;
        };
        book.alerts.remove(id);
        if let Some(mut report) = book.drafts.remove(id) {
            report.resolved = Some(record);
            book.writer.write(&report);
        }
    }

    /// A member known by its pid only (born during containment): what the
    /// process table knows of it.
    fn member_of_pid(&self, pid: u32) -> TreeMember {
        let lineage = self.table.lineage();
        let info = self.table.get(pid);
        let node = info.and_then(|p| lineage.get(p.node));
        TreeMember {
            pid,
            ppid: info.map(|p| p.ppid),
            comm: info.map(|p| p.comm.to_string()).unwrap_or_default(),
            exe: node.and_then(|n| n.exe.as_deref().map(str::to_owned)),
            cmdline: node.and_then(|n| n.cmdline.as_deref().map(<[String]>::to_vec)),
            started_boot_ns: info.map_or(0, |p| p.start_boot_ns),
            ..TreeMember::default()
        }
    }

    /// The cgroup's files, and the memory pool's when it is another.
    fn files_of(
        &self,
        cgroup: Option<&str>,
        pool: Option<&str>,
    ) -> std::collections::BTreeMap<String, String> {
        let mut files = std::collections::BTreeMap::new();
        if let Some(dir) = cgroup {
            files = self.host.cgroup_files(dir);
        }
        if let Some(pool) = pool.filter(|p| *p != HOST && Some(*p) != cgroup) {
            for (name, text) in self.host.cgroup_files(pool) {
                files.insert(format!("{pool}/{name}"), text);
            }
        }
        files
    }

    /// A report as it stands at `now`: the decision, the subtree from
    /// `root` (or the `members` given), the history, readings and files.
    fn draft(
        &self,
        id: &str,
        root: Option<NodeId>,
        members: &[Member],
        pool: Option<&str>,
        now: u64,
    ) -> Report {
        let lineage = self.table.lineage();
        let root_node = root.and_then(|r| lineage.get(r));
        let cgroup = root_node
            .and_then(|n| n.cgroups.get(self.primary).cloned().flatten())
            .or_else(|| {
                members
                    .first()
                    .and_then(|m| self.table.get(m.tgid))
                    .and_then(|p| p.cgroup(self.primary).cloned())
            });
        let mut tree: Vec<TreeMember> = match root {
            Some(root) => {
                let mut nodes = lineage.descendants(root);
                // The root first: the top of the tree.
                nodes.sort_by_key(|&(_, id)| (id != root, id));
                nodes
                    .into_iter()
                    .filter_map(|(tgid, id)| {
                        let n = lineage.get(id)?;
                        Some(TreeMember {
                            pid: tgid,
                            ppid: n.parent.and_then(|p| lineage.get(p)).map(|p| p.tgid),
                            comm: n.comm.to_string(),
                            exe: n.exe.as_deref().map(str::to_owned),
                            cmdline: n.cmdline.as_deref().map(<[String]>::to_vec),
                            started_boot_ns: n.born_ns,
                            gone: !n.alive,
                            ..TreeMember::default()
                        })
                    })
                    .collect()
            }
            None => Vec::new(),
        };
        let listed: std::collections::HashSet<u32> = tree.iter().map(|m| m.pid).collect();
        for m in members.iter().filter(|m| !listed.contains(&m.tgid)) {
            let mut member = self.member_of_pid(m.tgid);
            if member.started_boot_ns == 0 {
                member.started_boot_ns = m.born_ns;
            }
            tree.push(member);
        }
        let tree_omitted = tree.len().saturating_sub(TREE_MEMBERS);
        tree.truncate(TREE_MEMBERS);
        let (history, per_second) = match (&self.reports, cgroup.as_deref()) {
            (Some(book), Some(cg)) => book.history.of(cg, now),
            _ => (Vec::new(), Vec::new()),
        };
        let pids_cgroup = root_node.and_then(|n| n.cgroups.get(self.pids_index).cloned().flatten());
        let (readings, readings_of) = match (pool, pids_cgroup) {
            (Some(pool), _) => (
                self.detectors.memory.samples(pool),
                Some(format!("{pool} (unreclaimable bytes)")),
            ),
            (None, Some(cg)) => (
                self.detectors.fork.pids_samples(&cg),
                Some(format!("{cg} (pids.current)")),
            ),
            (None, None) => (Vec::new(), None),
        };
        Report {
            incident: id.to_owned(),
            host: self.out.host_name().to_owned(),
            time: self.out.time_rfc3339(now),
            boot_ns: now,
            decision: self
                .reports
                .as_ref()
                .and_then(|b| b.alerts.get(id).cloned())
                .unwrap_or(Value::Null),
            cgroup_before: self.files_of(cgroup.as_deref(), pool),
            cgroup: cgroup.map(|c| c.to_string()),
            tree,
            tree_omitted,
            history,
            per_second,
            readings,
            readings_of,
            cgroup_after: Default::default(),
            actions: Vec::new(),
            resolved: None,
        }
    }
}
