//! The detector interface: what a detector's glue implements to be run by
//! the pipeline, in the spirit of oomd's plugins. A detector owns its rule,
//! its state and its alerts; the pipeline routes events and ticks to it,
//! writes what it returns, and runs the actions (which pass the pipeline's
//! one gate: `log`, an action under way, `--dry-run`).
//!
//! A new detector is one file: a type that implements [`Plugin`] (its pure
//! rule beside it, or in `detect/`), its tests on a fixture
//! ([`super::fixture`]), and one line in `Pipeline::new`. `leak.rs` and
//! `crashloop.rs` are the examples.

use std::{cell::RefCell, collections::HashMap, sync::Arc};

use crate::{
    detect::{fork::ForkDetector, memory::PoolKey, switches::Detector},
    host::observe::Host,
    host::proctable::{LineageNode, NodeId, ProcInfo, ProcessTable},
    host::scope::Scope,
    kernel::decode::Event,
    output::record::{Alert, Offender, PodFields, Process},
    respond::protect::Protection,
};

use super::{ActionRequest, Settings};

/// A cgroup's task count and pids.max (`None`: no limit), read this tick.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PidsReading {
    pub cgroup: crate::detect::fork::CgroupKey,
    pub current: u64,
    pub limit: Option<u64>,
}

/// What a detector sees of the agent: read-only.
pub struct View<'a> {
    pub settings: &'a Settings,
    pub table: &'a ProcessTable,
    pub protection: &'a Protection,
    pub scope: &'a Scope,
    pub host: &'a dyn Host,
    /// The hierarchy whose paths records show.
    pub primary: usize,
    /// The fork detector: a cgroup's recent births name an offender.
    pub fork: &'a ForkDetector,
    /// Lineage nodes guard watches or acts on: their deaths are guard's.
    pub tagged: &'a HashMap<NodeId, (NodeId, u64)>,
    /// The memory hierarchy, and its directories' pools as found so far.
    pub mem_index: Option<usize>,
    pub pools: &'a RefCell<HashMap<Arc<str>, Option<PoolKey>>>,
}

impl View<'_> {
    /// The memory pool a process's memory cgroup counts against: itself or
    /// its nearest ancestor with a limit (`None`: only the host's).
    pub fn pool_of(&self, cgroups: &crate::host::cgroup::CgroupSet) -> Option<PoolKey> {
        let index = self.mem_index?;
        let dir = cgroups.get(index).cloned().flatten()?;
        if let Some(pool) = self.pools.borrow().get(&dir) {
            return pool.clone();
        }
        let mount = self.table.hierarchies().list.get(index)?.mount.clone();
        let mut at = crate::host::cgroup::fs_path(&dir);
        let pool = loop {
            let text = crate::host::cgroup::path_text(std::os::unix::ffi::OsStrExt::as_bytes(
                at.as_os_str(),
            ));
            if self.host.memory_limit(&text).is_some() {
                break Some(PoolKey::from(text.as_str()));
            }
            if at == mount || !at.pop() {
                break None;
            }
        };
        self.pools.borrow_mut().insert(dir, pool.clone());
        pool
    }

    /// `node` as an offender, with `subtree` members to act on.
    pub fn describe(&self, node: NodeId, subtree: usize) -> Option<Offender> {
        let n = self.table.lineage().get(node)?;
        let cgroup = n.cgroups.get(self.primary).cloned().flatten();
        Some(Offender::Known(Box::new(Process {
            alive: n.alive,
            cgroup: cgroup.as_deref().map(str::to_owned),
            // From exec records (the probe copies the arguments): reading
            // /proc/PID/cmdline here would wait on the offender's mmap_lock,
            // which a forking process holds.
            cmdline: n.cmdline.as_deref().map(<[String]>::to_vec),
            comm: n.comm.to_string(),
            comm_hex: crate::output::text::hex_if_not_utf8(n.comm.as_bytes()),
            exe: n.exe.as_deref().map(str::to_owned),
            not_spared_because: self.protection.impostor(n),
            pid: n.tgid,
            subtree_size: Some(subtree),
            memory_cgroup: None,
            pod: cgroup.as_deref().and_then(|c| {
                PodFields::of(
                    c,
                    self.settings.policies.pods(),
                    crate::host::clock::WallClock::boot_ns_now(),
                )
            }),
            growth: None,
        })))
    }

    /// Why `node` may not be blamed for `detector` (protected, or an
    /// ignored program), if it may not.
    pub fn spared(&self, detector: Detector, node: &LineageNode) -> Option<&'static str> {
        let ignore = match detector {
            Detector::Fork => &self.settings.ignore_fork,
            Detector::Memory => &self.settings.ignore_memory,
            Detector::Blocked => &self.settings.ignore_blocked,
            Detector::Leak => &self.settings.ignore_leak,
            Detector::Crashloop => return self.protection.why(node),
        };
        self.protection
            .why(node)
            .or_else(|| ignore.program(node.exe.as_deref()).then_some("ignored"))
    }
}

/// An alert, and the action it asks for (`None`: none, or `log`).
#[derive(Debug)]
pub struct Verdict {
    pub alert: Alert,
    /// The runaway it is about: repeated verdicts on one are one incident.
    pub subject: crate::output::incident::Subject,
    pub action: Option<ActionRequest>,
}

/// A detector run by the pipeline. Every hook has a default that does
/// nothing: implement those the rule needs.
pub trait Plugin: Send {
    /// Which detector it is (`--off` and policies name it so).
    fn detector(&self) -> Detector;

    /// An event, before the process table applies it: a process an exit
    /// removes is still in the table.
    fn before(&mut self, _view: &View<'_>, _event: &Event) {}

    /// An event the table applied; `subject` is the process it is about.
    fn event(
        &mut self,
        _view: &View<'_>,
        _event: &Event,
        _subject: Option<&ProcInfo>,
    ) -> Vec<Verdict> {
        Vec::new()
    }

    /// This tick's readings of cgroups' task counts.
    fn pids(&mut self, _view: &View<'_>, _now: u64, _readings: &[PidsReading]) {}

    /// Judge at `now` (after every batch of events, and every tick).
    fn check(&mut self, _view: &View<'_>, _now: u64) -> Vec<Verdict> {
        Vec::new()
    }

    /// The longest a runaway that goes on may go without a new verdict
    /// (the rule's re-alert period): an incident with no verdict for twice
    /// that has subsided (see `output::incident`).
    fn repeats_within(&self) -> u64 {
        60_000_000_000
    }
}
