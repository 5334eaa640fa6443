//! The fork guard's glue: the kernel's lineage tags and budgets of
//! suspected subtrees, ignore exemptions in the fork probe, the pids
//! readings, and the probe's condemnations turned into alerts and actions.

use super::*;
use crate::output::record::{ExplosionAlert, PidsLimitAlert};

impl<W: Write> Pipeline<W> {
    /// Tags `root`'s subtree with `tag`, in the kernel and in `tagged`. Each member's
    /// "since" is taken after its kernel tag is in place: a child born later
    /// got the tag from the fork probe.
    pub(super) fn follow(&mut self, root: NodeId, tag: u64) {
        let members = unprotected_members(self.table.lineage(), &self.protection, root);
        self.tagged.insert(root, (tag, WallClock::boot_ns_now()));
        for m in members {
            // A member the kernel cannot tag any more is dying (a zombie,
            // killed by the fork probe, say): it is followed all the same,
            // so that its exit is not taken for a crash.
            if let Some(system) = &self.system {
                let _ = system.tag(m.tgid, m.born_ns, tag);
            }
            if let Some(node) = self.table.get(m.tgid).map(|p| p.node) {
                self.tagged.insert(node, (tag, WallClock::boot_ns_now()));
            }
        }
    }

    /// A child born to a tagged subtree joins it.
    pub(super) fn follow_birth(&mut self, child: NodeId, tgid: u32, born_ns: u64) {
        let lineage = self.table.lineage();
        let Some(parent) = lineage.get(child).and_then(|n| n.parent) else {
            return;
        };
        let Some(&(tag, since)) = self.tagged.get(&parent) else {
            return;
        };
        if lineage
            .get(child)
            .is_some_and(|n| self.protection.why(n).is_some())
        {
            return;
        }
        if born_ns > since {
            // The fork probe passed the tag on: nothing to do in the kernel.
            self.tagged.insert(child, (tag, born_ns));
            return;
        }
        self.tagged.insert(child, (tag, WallClock::boot_ns_now()));
        if let Some(system) = &self.system {
            let _ = system.tag(tgid, born_ns, tag);
        }
    }

    /// A tagged process that became protected (exec'd into a protected
    /// program, moved out of scope or into a protected cgroup) loses its
    /// tag, in the kernel too: the fork probe knows nothing of protection.
    pub(super) fn untag_if_protected(&mut self, node: NodeId, tgid: u32) {
        let protected = self
            .table
            .lineage()
            .get(node)
            .is_some_and(|n| self.protection.why(n).is_some());
        if protected {
            self.tagged.remove(&node);
            if let Some(system) = &self.system {
                system.untag(tgid);
            }
        }
    }

    /// Tags the suspected subtree of every armed cgroup ahead of an alert,
    /// and forgets the watch once nothing is armed or acted on.
    pub(super) fn watch_armed(&mut self) {
        if self.settings.strongest_fork_action() == ActionKind::Log
            || self.settings.dry_run
            || self.settings.kernel_tags
        {
            return;
        }
        let armed = self.detectors.fork.armed_populations();
        if armed.is_empty() && self.active.is_empty() && !self.watched.is_empty() {
            // Quiet again: the kernel's budgets (and a condemnation one of
            // them made, if the agent's own rule never followed) end too.
            if let Some(system) = &self.system {
                for &tag in &self.watched {
                    system.unbudget(tag);
                    system.release(tag);
                }
            }
            self.watched.clear();
            self.tagged.clear();
            return;
        }
        for (cgroup, recent) in armed {
            if self.settings.action(Detector::Fork, Some(&cgroup)) == ActionKind::Log {
                continue;
            }
            let protection = &self.protection;
            let Some(suspect) = find_offender(self.table.lineage(), &recent, |n| protection.why(n))
            else {
                continue;
            };
            if self.watched.insert(suspect.node) {
                tracing::debug!(
                    "watching the subtree of {} (tag {})",
                    suspect.tgid,
                    suspect.node
                );
                self.follow(suspect.node, suspect.node);
                self.budget(suspect.node);
            }
        }
    }

    /// Has the fork probe apply the explosion rule to a watched subtree, so
    /// that it is condemned the moment the rule is met even when the agent
    /// is not running then (measured: under a bash bomb the agent's thread
    /// can go 100–300 ms without the CPU).
    pub(super) fn budget(&self, tag: NodeId) {
        let Some(system) = &self.system else {
            return;
        };
        let live = self.tagged.values().filter(|(t, _)| *t == tag).count() as u64;
        let limits = BudgetLimits::new(
            &self.detectors.fork.rules(),
            self.settings.strongest_fork_action(),
        );
        system.budget(tag, live, limits);
    }

    /// The detector's key for a process: its pids-hierarchy cgroup, when it
    /// is in scope and not protected as a kernel thread.
    pub(super) fn population_key(
        &self,
        cgroups: &crate::host::cgroup::CgroupSet,
        kernel_thread: bool,
    ) -> Option<CgroupKey> {
        if kernel_thread || !self.scope.contains_cgroups(cgroups) {
            return None;
        }
        cgroups.get(self.pids_index).cloned().flatten()
    }

    /// Counts the processes already alive at start.
    pub fn seed_detector(&mut self, now: u64) {
        let keys: Vec<CgroupKey> = self
            .table
            .processes()
            .filter_map(|p| self.population_key(&p.cgroups, p.kernel_thread))
            .collect();
        for key in keys {
            self.exempt_cgroup_if_ignored(&key);
            self.detectors.fork.present(now, &key);
        }
    }

    /// What the fork probe was told of cgroups before it attached:
    /// `judged`, the directories already looked at; `listed`, the entries
    /// written to its `SCOPE` map with their verdicts; `protected`, the
    /// `--protect`ed cgroups (never to be overridden below).
    pub fn exempted(&mut self, judged: &[String], listed: &[(String, u32)], protected: &[String]) {
        self.exempt_cgroups
            .extend(judged.iter().map(|d| Arc::from(d.as_str())));
        for (dir, verdict) in listed {
            self.scope_entries.insert(Arc::from(dir.as_str()), *verdict);
        }
        for dir in protected {
            self.scope_entries
                .insert(Arc::from(dir.as_str()), SCOPE_PROTECTED_BY_FLAG);
        }
    }

    /// Whether the fork probe judges by itself, with ignore rules to honour.
    pub(super) fn exempts(&self) -> bool {
        self.settings.kernel_tags
            && (!self.settings.ignore_fork.is_empty() || !self.settings.policies.is_empty())
    }

    /// A cgroup seen for the first time gets its own entry in the fork
    /// probe's `SCOPE` map when its verdict differs from the one the probe
    /// would take from its nearest listed ancestor: left alone (ignored, or
    /// a `log` policy), a softer action than the probe's, or the probe's
    /// own action below a cgroup left alone (a `kill` namespace's pod under
    /// a `log` default). Never below a `--protect`ed cgroup. A pod whose
    /// namespace a policy needs is judged once its name is known.
    pub(super) fn exempt_cgroup_if_ignored(&mut self, dir: &Arc<str>) {
        if !self.exempts() || self.exempt_cgroups.contains(dir) {
            return;
        }
        if self.settings.policies.awaits_pod_name(dir) {
            // Judged again at its next fork or attach, once kubelet's log
            // directory names the pod (looked for at most once a second);
            // until then the probe takes its parent's verdict.
            return;
        }
        self.exempt_cgroups.insert(dir.clone());
        let verdict = kernel_verdict(&self.settings, dir).unwrap_or(guard_common::SCOPE_IN);
        let inherited = std::path::Path::new(&**dir)
            .ancestors()
            .skip(1)
            .find_map(|a| self.scope_entries.get(a.to_str()?).copied())
            .unwrap_or(guard_common::SCOPE_IN);
        if verdict == inherited || inherited == SCOPE_PROTECTED_BY_FLAG {
            return;
        }
        if let Some(system) = &self.system {
            system.scope_cgroup(dir, verdict);
            self.scope_entries.insert(dir.clone(), verdict);
        }
    }

    /// Keeps the fork probe's exemptions in step with the process: an
    /// ignored program from its exec to its exit, an ignored cgroup from
    /// the first process seen in it.
    pub(super) fn track_exemptions(&mut self, event: &Event, p: &crate::host::proctable::ProcInfo) {
        if !self.exempts() {
            return;
        }
        match event {
            Event::Exec(_) => {
                let exe = self.table.lineage().get(p.node).and_then(|n| n.exe.clone());
                let ignored = self.settings.ignore_fork.program(exe.as_deref());
                if ignored != self.exempt_pids.contains(&p.tgid)
                    && let Some(system) = &self.system
                {
                    system.exempt_pid(p.tgid, ignored);
                    if ignored {
                        self.exempt_pids.insert(p.tgid);
                    } else {
                        self.exempt_pids.remove(&p.tgid);
                    }
                }
            }
            Event::Exit(e) if e.group_dead => {
                if self.exempt_pids.remove(&p.tgid)
                    && let Some(system) = &self.system
                {
                    system.exempt_pid(p.tgid, false);
                }
            }
            Event::Fork(_) | Event::CgroupAttach(_) => {
                if let Some(dir) = p.cgroups.get(self.pids_index).cloned().flatten() {
                    self.exempt_cgroup_if_ignored(&dir);
                }
            }
            _ => {}
        }
    }

    /// Births, exits and moves of the populations the fork detector counts,
    /// and of the subtrees it has tagged.
    pub(super) fn count_population(
        &mut self,
        event: &Event,
        p: &crate::host::proctable::ProcInfo,
        moved_from: Option<CgroupKey>,
    ) {
        let key = self.population_key(&p.cgroups, p.kernel_thread);
        let now = event.boot_ns();
        if let Event::Fork(f) = event
            && !f.is_thread()
            && !self.tagged.is_empty()
        {
            self.follow_birth(p.node, p.tgid, p.start_boot_ns);
        }
        // An exec (new comm) or a move (out of scope, into a protected
        // cgroup) can make a tagged process protected.
        if matches!(event, Event::Exec(_) | Event::CgroupAttach(_))
            && self.tagged.contains_key(&p.node)
        {
            self.untag_if_protected(p.node, p.tgid);
        }
        match (event, key) {
            // Threads are tasks, as pids.max counts them: births and exits
            // of the population (a thread's depth runs along the threads
            // that started threads).
            (Event::Fork(f), Some(key)) => {
                let process = self.table.lineage().get(p.node).map_or(0, |n| n.depth);
                let depth = if f.is_thread() {
                    let creator = self.thread_depth.get(&f.parent_pid).copied();
                    let depth = creator.unwrap_or(process) + 1;
                    if self.thread_depth.len() >= THREADS_KEPT {
                        self.thread_depth.clear();
                    }
                    self.thread_depth.insert(f.child_pid, depth);
                    depth
                } else {
                    process
                };
                self.detectors.fork.birth(now, &key, p.node, depth)
            }
            (Event::Exit(e), Some(key)) => {
                self.thread_depth.remove(&e.pid);
                self.detectors.fork.gone(now, &key)
            }
            (Event::CgroupAttach(_), key) if key != moved_from => {
                if let Some(old) = &moved_from {
                    self.detectors.fork.gone(now, old);
                }
                if let Some(new) = &key {
                    self.detectors.fork.present(now, new);
                }
            }
            _ => {}
        }
    }

    /// Feeds the trend rule: pids.current and pids.max of every populated
    /// cgroup with a limit, and the host's task count.
    pub fn sample_pids(&mut self, now: u64) {
        let mut readings = Vec::new();
        for key in self.detectors.fork.populated() {
            let Some((current, limit)) = self.host.cgroup_pids(&key) else {
                continue;
            };
            if limit.is_some() {
                self.detectors.fork.pids_sample(now, &key, current, limit);
            }
            readings.push(PidsReading {
                cgroup: key,
                current,
                limit,
            });
        }
        self.pids_to_plugins(now, &readings);
        if let Some((total, limit)) = self.host.host_pids() {
            self.detectors
                .fork
                .pids_sample(now, &Arc::from(HOST), total, Some(limit));
        }
    }

    /// The tag the fork probe gave the subtree rooted at `root_tgid`, found
    /// on the root or one of its first members.
    pub(super) fn probe_tag_of(&self, root_tgid: u32, members: &[Member]) -> Option<u64> {
        let system = self.system.as_ref()?;
        if !self.settings.kernel_tags {
            return None;
        }
        std::iter::once(root_tgid)
            .chain(members.iter().take(8).map(|m| m.tgid))
            .filter_map(|tgid| system.tag_of(tgid))
            .find(|&tag| guard_common::auto_tag_root(tag) == Some(root_tgid))
            // Every member the probe killed is gone, and its tag with it;
            // its condemnation of the subtree is still in the kernel's map
            // until an action releases it (the agent may not have read the
            // probe's record yet: it was starved, or frozen).
            .or_else(|| system.condemned_root(root_tgid))
    }

    /// Whether an action is under way on `node`'s subtree (under its own
    /// tag, or one it carries).
    pub(super) fn acting_on(&self, node: NodeId) -> bool {
        self.active.contains(&node)
            || self
                .tagged
                .get(&node)
                .is_some_and(|(tag, _)| self.active.contains(tag))
    }

    /// The fork probe condemned a subtree on its budget: its members that
    /// fork die (with their newborn child) from now on. Alerts, and has the
    /// agent signal the members that do not fork. The root of a subtree the
    /// probe tagged by itself is found by walking up from the member whose
    /// fork met the rule (it may have exited already: lineage keeps it).
    pub(super) fn kernel_condemned(
        &mut self,
        c: &crate::kernel::decode::Condemned,
    ) -> io::Result<()> {
        let forker_cgroup = self
            .table
            .get(c.forker_tgid)
            .and_then(|p| p.cgroups.get(self.pids_index).cloned().flatten());
        let action = self
            .settings
            .action(Detector::Fork, forker_cgroup.as_deref());
        if action == ActionKind::Log || self.settings.dry_run || self.active.contains(&c.tag) {
            return Ok(());
        }
        let lineage = self.table.lineage();
        let root = match c.root_tgid {
            None => lineage.get(c.tag).is_some().then_some(c.tag),
            Some(root_tgid) => self.table.get(c.forker_tgid).and_then(|forker| {
                let own = lineage.get(forker.node).map(|n| (forker.node, n));
                own.into_iter()
                    .chain(lineage.ancestors(forker.node))
                    .find(|(_, n)| n.tgid == root_tgid)
                    .map(|(id, _)| id)
            }),
        };
        if let Some(root) = root
            && self.acting_on(root)
        {
            return Ok(());
        }
        // An ignored subtree (tagged before its cgroup was exempted, or
        // rooted at an ignored program): the probe signals none of it (it
        // is protected there now); the condemnation ends.
        let ignored = root.and_then(|r| lineage.get(r)).is_some_and(|n| {
            let cgroup = n.cgroups.get(self.pids_index).cloned().flatten();
            self.settings
                .ignore_fork
                .matches(n.exe.as_deref(), cgroup.as_deref())
        });
        if ignored {
            if let Some(system) = &self.system {
                system.release(c.tag);
                system.unbudget(c.tag);
            }
            tracing::info!(
                "the fork probe condemned subtree {}, which --ignore leaves alone",
                c.tag
            );
            return Ok(());
        }
        let members = root.map_or_else(Vec::new, |r| {
            unprotected_members(lineage, &self.protection, r)
        });
        let offender = match root {
            Some(r) => self.describe_offender(r, members.len()),
            None => Some(Offender::Gone {
                note: "gone before guard knew it".into(),
                pid: c.root_tgid,
            }),
        };
        let cgroup = root
            .and_then(|r| self.table.lineage().get(r))
            .and_then(|n| n.cgroups.get(self.pids_index).cloned().flatten());
        let window_s = c.window_ns as f64 / 1e9;
        let alert = Alert::Explosion(ExplosionAlert {
            detector: Detector::Fork,
            rule: Rule::Explosion,
            cgroup: cgroup.as_deref().map(str::to_owned),
            births: c.births,
            births_per_sec: (c.births as f64 / window_s.max(1e-9)).round(),
            growth: c.growth,
            deep_births: c.deep_births.into(),
            live: None,
            window_ms: c.window_ns / 1_000_000,
            condemned_by_kernel: true,
            blame: Blame::on(offender.clone(), action),
        });
        let subject = Subject::Lineage {
            node: root,
            tag: c.tag,
        };
        let incident = self.raise(self.last_event_ns, subject, &alert)?;
        let request = ActionRequest {
            detector: Detector::Fork,
            rule: Rule::Explosion,
            tag: c.tag,
            root,
            kind: action,
            offender,
            members,
            pool: None,
            follow_ups: 0,
            incident: Some(incident),
        };
        self.active.insert(c.tag);
        if let Some(r) = root {
            self.follow(r, c.tag);
        }
        self.pending.push(request);
        Ok(())
    }

    /// The fork rules' verdicts: alerts, and the actions they lead to.
    pub(super) fn fork_verdicts(&mut self, now: u64) -> io::Result<Vec<ActionRequest>> {
        let mut requests = Vec::new();
        let mut verdicts = self.detectors.fork.check(now);
        if !self.settings.runs(Detector::Fork) {
            verdicts.clear();
        }
        // An explosion or a rush judged on counts that lost events may have
        // inflated is no verdict: recount, and judge again from there. (The
        // trend rule reads pids.current, which no loss touches.)
        let from_counts = |v: &ForkVerdict| {
            matches!(
                v,
                ForkVerdict::Explosion { .. }
                    | ForkVerdict::Limit {
                        rule: LimitRule::Rush,
                        ..
                    }
            )
        };
        let recounted = verdicts.iter().any(from_counts) && self.recount_after_losses(now);
        for verdict in verdicts {
            if recounted && from_counts(&verdict) {
                continue;
            }
            let (cgroup, recent) = match &verdict {
                ForkVerdict::Explosion { cgroup, recent, .. }
                | ForkVerdict::Limit { cgroup, recent, .. } => (cgroup.clone(), recent.clone()),
            };
            if self.settings.ignore_fork.cgroup(Some(&cgroup)) {
                continue;
            }
            let lineage = self.table.lineage();
            let protection = &self.protection;
            let ignore = &self.settings.ignore_fork;
            let offender = find_offender(lineage, &recent, |n| {
                protection
                    .why(n)
                    .or_else(|| ignore.program(n.exe.as_deref()).then_some("ignored"))
            });
            let Some(offender) = offender else {
                let blame = Blame::nobody("no unprotected process behind the growth");
                let subject = Subject::Cgroup(cgroup.to_string());
                self.raise(now, subject, &fork_alert(&verdict, false, blame))?;
                continue;
            };
            if self.acting_on(offender.node) {
                // Condemned by the fork probe already, and being contained.
                continue;
            }
            let members = unprotected_members(lineage, protection, offender.node);
            let described = self.describe_offender(offender.node, members.len());
            // The subtree may carry the fork probe's own tag already: act
            // under it, so that the probe's budget and condemnation and the
            // agent's signals are one; and say so when the probe condemned
            // it first (its record may still be on its way).
            let probe_tag = self.probe_tag_of(offender.tgid, &members);
            let by_kernel = matches!(
                (probe_tag, &self.system),
                (Some(t), Some(system)) if system.is_condemned(t)
            );
            let action = self.settings.action_of(
                Detector::Fork,
                Some(&cgroup),
                &lineage
                    .get(offender.node)
                    .map(|n| n.cgroups.to_vec())
                    .unwrap_or_default(),
            );
            let blame = Blame::on(described.clone(), action);
            let alert = fork_alert(&verdict, by_kernel, blame);
            let tag = probe_tag.unwrap_or(offender.node);
            let subject = Subject::Lineage {
                node: Some(offender.node),
                tag,
            };
            let incident = self.raise(now, subject, &alert)?;
            if action == ActionKind::Log || self.active.contains(&offender.node) {
                continue;
            }
            let request = ActionRequest {
                detector: Detector::Fork,
                rule: alert.rule(),
                tag,
                root: Some(offender.node),
                kind: action,
                offender: described,
                members,
                pool: None,
                follow_ups: 0,
                incident: Some(incident),
            };
            if self.settings.dry_run {
                self.dry_run(&request)?;
            } else {
                self.active.insert(request.tag);
                self.follow(offender.node, request.tag);
                requests.push(request);
            }
        }
        Ok(requests)
    }

    /// When events were lost since the last look, the live counts the fork
    /// detector kept from births and exits are unknown: drops table entries
    /// whose process is gone and recounts every population from the table.
    /// True when it recounted.
    pub fn recount_after_losses(&mut self, now: u64) -> bool {
        let Some(total) = self.losses.as_ref().map(|count| count()) else {
            return false;
        };
        if total == self.losses_seen {
            return false;
        }
        self.losses_seen = total;
        let mut counts: HashMap<CgroupKey, u32> = HashMap::new();
        for p in self.table.processes() {
            if let Some(key) = self.population_key(&p.cgroups, p.kernel_thread)
                && self.table.exists(p.tgid)
            {
                *counts.entry(key).or_default() += 1;
            }
        }
        self.detectors.fork.recount(now, &counts);
        self.sweep_pending = true;
        tracing::info!(
            "events were lost: recounted the processes of {} cgroups",
            counts.len()
        );
        true
    }

    /// Drops table entries whose exit may have been lost, once the pipeline
    /// has caught up with the kernel: while it still works through a
    /// backlog (a frozen or starved agent), the events ahead refer to
    /// processes that are gone by now, and need their entries.
    pub fn sweep_if_caught_up(&mut self, now: u64) {
        if self.sweep_pending && now.saturating_sub(self.last_event_ns) < CAUGHT_UP_NS {
            self.sweep_pending = false;
            let swept = self.table.sweep();
            tracing::debug!("dropped {swept} stale process-table entries");
        }
    }
}

/// The alert of an agent's fork verdict.
fn fork_alert(verdict: &ForkVerdict, condemned_by_kernel: bool, blame: Blame) -> Alert {
    match verdict {
        ForkVerdict::Explosion {
            cgroup,
            births,
            births_per_sec,
            growth,
            deep_births,
            live,
            window_ns,
            ..
        } => Alert::Explosion(ExplosionAlert {
            detector: Detector::Fork,
            rule: Rule::Explosion,
            cgroup: Some(cgroup.to_string()),
            births: u64::from(*births),
            births_per_sec: births_per_sec.round(),
            growth: u64::from(*growth),
            deep_births: u64::from(*deep_births),
            live: Some(u64::from(*live)),
            window_ms: window_ns / 1_000_000,
            condemned_by_kernel,
            blame,
        }),
        ForkVerdict::Limit {
            rule,
            cgroup,
            current,
            limit,
            per_sec,
            eta_ns,
            ..
        } => Alert::PidsLimit(PidsLimitAlert {
            detector: Detector::Fork,
            rule: (*rule).into(),
            cgroup: cgroup.to_string(),
            current: *current,
            limit: *limit,
            per_sec: (per_sec * 100.0).round() / 100.0,
            eta_secs: (*eta_ns as f64 / 1e8).round() / 10.0,
            eta: human_duration(*eta_ns),
            condemned_by_kernel,
            blame,
        }),
    }
}

/// In the pipeline's copy of the `SCOPE` map: a `--protect`ed cgroup
/// (`SCOPE_PROTECTED` in the map), which no policy overrides below.
const SCOPE_PROTECTED_BY_FLAG: u32 = u32::MAX;

/// What the fork probe must be told of `dir`, when it must differ from
/// its own action (the strongest asked for anywhere): leave it alone
/// (`SCOPE_PROTECTED`: the fork detector ignores it, or its action is
/// `log`), or act more softly there: refuse only (a `refuse` policy
/// where the probe stops or kills), stop (a `stop` policy where it
/// kills). `None`: the probe's own action is the cgroup's.
pub fn kernel_verdict(settings: &Settings, dir: &str) -> Option<u32> {
    let action = settings.action(Detector::Fork, Some(dir));
    if settings.ignore_fork.cgroup(Some(dir)) || action == ActionKind::Log {
        return Some(guard_common::SCOPE_PROTECTED);
    }
    let probe = settings.strongest_fork_action();
    match (action, probe) {
        (a, p) if a.refuses() && p.signal().is_some() => Some(guard_common::SCOPE_IN_REFUSE),
        (ActionKind::Stop, ActionKind::Kill) => Some(guard_common::SCOPE_IN_STOP),
        _ => None,
    }
}
