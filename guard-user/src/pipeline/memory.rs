//! The memory guard's glue: pools and their readings, members'
//! baselines, host pressure, and verdicts turned into subtree actions.

use super::*;
use crate::output::record::{Growth, HostPressure, MemoryAlert, Share};

/// Shortest time between two readings of one memory cgroup driven by `rss`
/// records (a fast allocator crosses a 64 MiB step every few ms).
const POOL_SAMPLE_GAP_NS: u64 = 20_000_000;

/// Swap-ins and refaults a second, each, that make the host thrashing.
const THRASHING_PAGES_PER_SEC: f64 = 256.0;

/// How often a growing pool's members are snapshotted.
const BASELINE_EVERY_NS: u64 = 15_000_000_000;

impl<W: Write> Pipeline<W> {
    /// The memory pool a process's memory cgroup counts against.
    pub(super) fn pool_of(&self, cgroups: &crate::host::cgroup::CgroupSet) -> Option<PoolKey> {
        self.view().pool_of(cgroups)
    }

    /// Feeds the memory rule from `rss` records and exits; reads the pool
    /// of a process that crossed a step, at most every 20 ms.
    pub(super) fn track_memory(
        &mut self,
        event: &Event,
        subject: Option<&crate::host::proctable::ProcInfo>,
    ) {
        match (event, subject) {
            (Event::Rss(r), Some(p))
                if !p.kernel_thread && self.scope.contains_cgroups(&p.cgroups) =>
            {
                let pool = self.pool_of(&p.cgroups);
                self.detectors.memory.rss(
                    r.boot_ns,
                    r.tgid,
                    p.node,
                    pool.clone(),
                    r.unreclaimable_bytes(),
                    r.previous_step.is_none_or(|step| step == 0),
                );
                let now = r.boot_ns;
                if let Some(pool) = pool
                    && self
                        .detectors
                        .memory
                        .sampled_at(&pool)
                        .is_none_or(|at| now.saturating_sub(at) >= POOL_SAMPLE_GAP_NS)
                    && let Some(usage) = self.host.memcg_usage(&pool)
                {
                    self.detectors.memory.sample(now, &pool, usage);
                }
            }
            // Every pool with processes in scope is watched, not only those
            // whose processes crossed an rss step: a server's helpers of
            // tens of MB each never do.
            (Event::Fork(f), Some(p))
                if !f.is_thread()
                    && !p.kernel_thread
                    && self.scope.contains_cgroups(&p.cgroups) =>
            {
                self.watch_pool(event.boot_ns(), &p.cgroups);
            }
            (Event::CgroupAttach(_), Some(p))
                if !p.kernel_thread && self.scope.contains_cgroups(&p.cgroups) =>
            {
                self.watch_pool(event.boot_ns(), &p.cgroups);
            }
            (Event::ReclaimStall(r), Some(p)) if self.scope.contains_cgroups(&p.cgroups) => {
                self.last_reclaim_stall_ns = Some(r.boot_ns);
            }
            (Event::Exit(e), _) if e.group_dead => self.detectors.memory.gone(e.tgid),
            _ => {}
        }
    }

    /// Starts sampling the pool of a process's memory cgroup, if new.
    pub(super) fn watch_pool(&mut self, now: u64, cgroups: &crate::host::cgroup::CgroupSet) {
        if let Some(pool) = self.pool_of(cgroups)
            && self.detectors.memory.sampled_at(&pool).is_none()
            && let Some(usage) = self.host.memcg_usage(&pool)
        {
            self.detectors.memory.sample(now, &pool, usage);
        }
    }

    /// The processes in scope whose memory counts against `pool`.
    pub(super) fn pool_members(&mut self, pool: &PoolKey) -> Vec<(u32, NodeId)> {
        let candidates: Vec<(u32, NodeId, crate::host::cgroup::CgroupSet)> = self
            .table
            .processes()
            .filter(|p| !p.kernel_thread && self.scope.contains_cgroups(&p.cgroups))
            .map(|p| (p.tgid, p.node, p.cgroups.clone()))
            .collect();
        candidates
            .into_iter()
            .filter(|(_, _, cgroups)| {
                &**pool == HOST || self.pool_of(cgroups).as_ref() == Some(pool)
            })
            .map(|(tgid, node, _)| (tgid, node))
            .collect()
    }

    /// While a pool grows, snapshots its members' unreclaimable bytes every
    /// [`BASELINE_EVERY_NS`], keeping two: growth is measured from the
    /// older one, 15 to 30 s back (or from the first, for a runaway that
    /// began less than that ago).
    pub(super) fn keep_baseline(&mut self, now: u64, pool: &PoolKey, growing: bool) {
        let fresh = self
            .baselines
            .get(pool)
            .and_then(|b| b.back())
            .is_some_and(|(at, _)| now.saturating_sub(*at) < BASELINE_EVERY_NS);
        if let Some(b) = self.baselines.get_mut(pool) {
            b.retain(|(at, _)| now.saturating_sub(*at) <= 4 * BASELINE_EVERY_NS);
        }
        if !growing || fresh {
            return;
        }
        let bytes: HashMap<u32, u64> = self
            .pool_members(pool)
            .into_iter()
            .filter_map(|(tgid, _)| Some((tgid, self.host.process_unreclaimable(tgid)?)))
            .collect();
        let kept = self.baselines.entry(pool.clone()).or_default();
        kept.push_back((now, bytes));
        while kept.len() > 2 {
            kept.pop_front();
        }
    }

    /// Judges whether the host is under memory pressure now: every task
    /// stalled on memory for [`PSI_FULL_PRESSURE`] percent of the last 10 s,
    /// or pages swapped in and refaulted both faster than
    /// [`THRASHING_PAGES_PER_SEC`] (thrashing: what was swapped out is
    /// needed again at once).
    pub(super) fn host_pressure(&mut self, now: u64) {
        let psi = self.host.memory_pressure();
        let swap = self.host.swap_activity();
        let rates = match (self.last_swap, swap) {
            (Some((t, a, b)), Some((x, y))) if now > t => {
                let secs = (now - t) as f64 / 1e9;
                Some((
                    x.saturating_sub(a) as f64 / secs,
                    y.saturating_sub(b) as f64 / secs,
                ))
            }
            _ => None,
        };
        self.last_swap = swap.map(|(a, b)| (now, a, b));
        let stalled = psi.is_some_and(|p| p.full_avg10 >= PSI_FULL_PRESSURE);
        let thrashing = rates.is_some_and(|(swapin, refault)| {
            swapin >= THRASHING_PAGES_PER_SEC && refault >= THRASHING_PAGES_PER_SEC
        });
        self.pressure_now = (stalled || thrashing).then(|| HostPressure {
            psi_full_avg10: psi.map(|p| p.full_avg10),
            psi_some_avg10: psi.map(|p| p.some_avg10),
            refaults_per_sec: rates.map(|r| r.1.round()),
            swapin_pages_per_sec: rates.map(|r| r.0.round()),
        });
        self.detectors
            .memory
            .host_pressure(now, stalled || thrashing);
    }

    /// Reads every memory pool guard knows of, and the host's.
    pub fn sample_memory(&mut self, now: u64) {
        for pool in self.detectors.memory.pools() {
            if &*pool == HOST {
                continue;
            }
            let before = self.detectors.memory.usage(&pool).map(|u| u.unreclaimable);
            match self.host.memcg_usage(&pool) {
                Some(usage) => {
                    self.detectors.memory.sample(now, &pool, usage);
                    let growing = before.is_some_and(|b| usage.unreclaimable > b);
                    self.keep_baseline(now, &pool, growing);
                }
                None if !self.host.cgroup_exists(&pool) => {
                    // Removed: forget it, and the directories that led to it.
                    self.detectors.memory.remove_pool(&pool);
                    self.baselines.remove(&pool);
                    self.pool_of_dir
                        .borrow_mut()
                        .retain(|_, to| to.as_deref() != Some(&*pool));
                }
                None => {}
            }
        }
        self.host_pressure(now);
        if let Some(host) = self.host.host_memory() {
            let key = PoolKey::from(HOST);
            let before = self.detectors.memory.usage(HOST).map(|u| u.unreclaimable);
            self.detectors.memory.sample(now, &key, host);
            // The host's baseline reads every process in scope: only when
            // the host is past half of its memory.
            let growing = before.is_some_and(|b| host.unreclaimable > b)
                && host.unreclaimable * 2 > host.limit;
            self.keep_baseline(now, &key, growing);
        }
    }

    /// The first alive, unprotected process among a pool's growers, as an
    /// action of the memory detector's policy.
    pub(super) fn memory_request(
        &mut self,
        now: u64,
        detector: Detector,
        rule: Rule,
        pool: &PoolKey,
        usage: u64,
        growers: &[Grower],
    ) -> Option<ActionRequest> {
        if !self.settings.runs(Detector::Memory) {
            return None;
        }
        if let Some(request) = self.subtree_request(now, detector, rule, pool, usage) {
            return Some(request);
        }
        // No member readable now (all gone meanwhile): the processes the
        // rss records saw grow.
        let lineage = self.table.lineage();
        let ignore = &self.settings.ignore_memory;
        let (g, node) = growers.iter().find_map(|g| {
            let n = lineage.get(g.node)?;
            let cgroup = n.cgroups.get(self.primary).cloned().flatten();
            let spared = self.protection.why(n).is_some()
                || ignore.matches(n.exe.as_deref(), cgroup.as_deref());
            (n.alive && !spared).then_some((g, n))
        })?;
        let mut described = self.describe_offender(g.node, 1);
        if let Some(Offender::Known(o)) = &mut described {
            o.subtree_size = None;
            o.growth = Some(Growth {
                growth_bytes: g.growth,
                resident_bytes: g.resident,
                share: None,
            });
        }
        Some(ActionRequest {
            detector,
            rule,
            tag: g.node,
            root: Some(g.node),
            kind: self
                .settings
                .action_of(Detector::Memory, Some(pool), &node.cgroups),
            offender: described,
            members: vec![Member {
                tgid: g.tgid,
                born_ns: node.born_ns,
            }],
            pool: Some((pool.clone(), usage)),
            follow_ups: 0,
            incident: None,
        })
    }

    /// The subtree whose members' growth explains the pool's (see
    /// `detect::subtree`), as an action on all of it.
    pub(super) fn subtree_request(
        &mut self,
        now: u64,
        detector: Detector,
        rule: Rule,
        pool: &PoolKey,
        usage: u64,
    ) -> Option<ActionRequest> {
        let before: HashMap<u32, u64> = self
            .baselines
            .get(pool)
            .and_then(|b| b.front())
            .map(|(_, bytes)| bytes.clone())
            .unwrap_or_default();
        let readings: Vec<subtree::Member> = self
            .pool_members(pool)
            .into_iter()
            .filter_map(|(tgid, node)| {
                Some(subtree::Member {
                    node,
                    now: self.host.process_unreclaimable(tgid)?,
                    before: before.get(&tgid).copied(),
                })
            })
            .collect();
        let lineage = self.table.lineage();
        let spared = |n: &crate::host::proctable::LineageNode| {
            let cgroup = n.cgroups.get(self.primary).cloned().flatten();
            self.protection.why(n).or_else(|| {
                self.settings
                    .ignore_memory
                    .matches(n.exe.as_deref(), cgroup.as_deref())
                    .then_some("ignored")
            })
        };
        let prefer = &self.settings.prefer;
        let preferred = |n: &crate::host::proctable::LineageNode| {
            n.exe
                .as_deref()
                .is_some_and(|exe| prefer.iter().any(|r| r.is_match(exe)))
        };
        let o = (!prefer.is_empty())
            .then(|| subtree::preferred(lineage, &readings, spared, preferred))
            .flatten()
            .or_else(|| subtree::offender(lineage, &readings, spared))?;
        let members: Vec<Member> = unprotected_members(lineage, &self.protection, o.node)
            .into_iter()
            .filter(|m| {
                self.table
                    .get(m.tgid)
                    .and_then(|p| lineage.get(p.node))
                    .is_none_or(|n| spared(n).is_none())
            })
            .collect();
        if members.is_empty() {
            return None;
        }
        let baseline_secs = self
            .baselines
            .get(pool)
            .and_then(|b| b.front())
            .map(|(at, _)| (now.saturating_sub(*at) / 1_000_000) as f64 / 1e3);
        let mut described = self.describe_offender(o.node, members.len());
        if let Some(Offender::Known(d)) = &mut described {
            d.growth = Some(Growth {
                growth_bytes: o.growth,
                resident_bytes: o.resident,
                share: Some(Share {
                    baseline_secs,
                    share_of_growth: (o.share * 100.0).round() / 100.0,
                }),
            });
        }
        Some(ActionRequest {
            detector,
            rule,
            tag: o.node,
            root: Some(o.node),
            kind: self.settings.action_of(
                Detector::Memory,
                Some(pool),
                &lineage_cgroups(self.table.lineage(), o.node),
            ),
            offender: described,
            members,
            pool: Some((pool.clone(), usage)),
            follow_ups: 0,
            incident: None,
        })
    }

    /// Writes a memory alert and queues the action it leads to.
    pub(super) fn memory_alert(&mut self, now: u64, v: &MemoryVerdict) -> io::Result<()> {
        // Host pressure may come from outside the scope: only a host-wide
        // guard acts on it, and only on a subtree that grew by a sixteenth
        // of the host's memory.
        let pressure_only = v.rule == MemoryRule::Pressure && !self.scope.cgroups.is_empty();
        let rule = Rule::from(v.rule);
        let request = self
            .memory_request(
                now,
                Detector::Memory,
                rule,
                &v.pool,
                v.usage.unreclaimable,
                &v.growers,
            )
            .filter(|r| {
                v.rule != MemoryRule::Pressure
                    || (!pressure_only && offender_growth(r) >= v.usage.limit / 16)
            });
        let limit = v.usage.limit.max(1);
        let alert = |blame| {
            Alert::Memory(MemoryAlert {
                detector: Detector::Memory,
                rule,
                cgroup: v.pool.to_string(),
                usage_bytes: v.usage.unreclaimable,
                charged_bytes: v.usage.usage,
                limit_bytes: v.usage.limit,
                percent: (v.usage.unreclaimable as f64 * 1000.0 / limit as f64).round() / 10.0,
                mib_per_sec: (v.bytes_per_sec / f64::from(1 << 20) * 10.0).round() / 10.0,
                eta_secs: v.eta_ns.map(|e| (e as f64 / 1e8).round() / 10.0),
                pressure: (v.rule == MemoryRule::Pressure).then(|| self.pressure_now.clone()),
                blame,
            })
        };
        let Some(request) = request else {
            let note = if pressure_only {
                "the host is under memory pressure; with --cgroup, guard does not act on it (the cause may be outside the scope)"
            } else {
                "no unprotected process grew enough in this pool"
            };
            let subject = Subject::Cgroup(v.pool.to_string());
            return self
                .raise(now, subject, &alert(Blame::nobody(note)))
                .map(drop);
        };
        let subject = Subject::Cgroup(v.pool.to_string());
        let blamed = alert(Blame::on(request.offender.clone(), request.kind));
        let incident = self.raise(now, subject, &blamed)?;
        self.queue(ActionRequest {
            incident: Some(incident),
            ..request
        })
    }
}

/// How much a memory request's offender grew (0: unknown).
fn offender_growth(request: &ActionRequest) -> u64 {
    request
        .offender
        .as_ref()
        .and_then(Offender::process)
        .and_then(|p| p.growth.as_ref())
        .map_or(0, |g| g.growth_bytes)
}

/// A lineage node's cgroups, one per hierarchy (none when it is unknown).
fn lineage_cgroups(lineage: &Lineage, node: NodeId) -> Vec<Option<Arc<str>>> {
    lineage
        .get(node)
        .map(|n| n.cgroups.to_vec())
        .unwrap_or_default()
}
