//! Actions: the only module that touches other processes.
//!
//! Containing a subtree that re-forks while it is being signalled (a bash
//! fork bomb fills pids.max=512 in ~150 ms; killing only the forkers leaves
//! the population steady) must converge:
//!
//! 1. every known live member gets the subtree's lineage tag in the kernel
//!    (after checking, through a pidfd and its start time, that the pid
//!    still names that member); children inherit the tag at fork;
//! 2. the tag is condemned: from then on, a member that tries to fork is
//!    signalled by the fork probe itself (`bpf_send_signal`), at once;
//! 3. every tagged process is signalled through a pidfd, after checking it
//!    still carries the tag (a reused pid never does), round after round
//!    until none is left running: SIGSTOP for `stop`, SIGKILL for `kill`
//!    (condemned with SIGKILL from the start, nothing can fork in between:
//!    that is what freezing first would buy, without its leak).
//!
//! Members are judged by live processes: a killed member stays a zombie
//! until its (adoptive) parent reaps it, still holding a pids.current slot;
//! the outcome says how many zombies remain.
//!
//! [`System`] is the seam: [`LiveSystem`] does it for real, tests record.

use std::{
    collections::BTreeSet,
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::maps::{HashMap as BpfHashMap, MapData};

use crate::kernel_scope::BudgetLimits;
use crate::policy::ActionKind;

/// How a process is doing, from /proc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcState {
    Gone,
    Zombie,
    Stopped,
    Running,
}

/// Everything containment needs from the system. Shared: the pipeline tags
/// members born while an action runs, as their fork events arrive.
pub trait System {
    /// Gives `tgid` the lineage tag, if it is still the process born at
    /// `born_ns` (0: unknown). False when it is gone or someone else.
    fn tag(&self, tgid: u32, born_ns: u64, tag: u64) -> bool;
    /// Makes the fork probe send `signal` to members of `tag` that fork.
    fn condemn(&self, tag: u64, signal: i32);
    /// Ends the condemnation.
    fn release(&self, tag: u64);
    /// Processes that carry `tag` now.
    fn tagged(&self, tag: u64) -> Vec<u32>;
    /// Signals `tgid` if it still carries `tag`. True when sent.
    fn signal_tagged(&self, tgid: u32, tag: u64, signal: i32) -> bool;
    /// Why `tgid` must not be signalled, judged now; `None` when it may be.
    fn protected(&self, tgid: u32) -> Option<&'static str>;
    /// Takes `tgid`'s tag away (it became something protected).
    fn untag(&self, tgid: u32);
    fn state(&self, tgid: u32) -> ProcState;
    /// Has the fork probe enforce the explosion rule on `tag`'s subtree
    /// (`live` members now): it condemns the tag itself when the rule is met.
    fn budget(&self, _tag: u64, _live: u64, _limits: BudgetLimits) {}
    /// Ends that.
    fn unbudget(&self, _tag: u64) {}
    /// The lineage tag `tgid` carries in the kernel now.
    fn tag_of(&self, _tgid: u32) -> Option<u64> {
        None
    }
    /// Whether `tag` is condemned in the kernel now.
    fn is_condemned(&self, _tag: u64) -> bool {
        false
    }
    /// A tag the fork probe gave a subtree rooted at `root_tgid` and has
    /// condemned, when there is one.
    fn condemned_root(&self, _root_tgid: u32) -> Option<u64> {
        None
    }
    /// Has the fork probe leave `tgid` alone (an ignored program), or no
    /// longer (it exited).
    fn exempt_pid(&self, _tgid: u32, _exempt: bool) {}
    /// Has the fork probe leave the cgroup directory `dir` alone (and what
    /// is below it).
    fn exempt_cgroup(&self, _dir: &str) {}
}

/// A member of the subtree to contain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    pub tgid: u32,
    pub born_ns: u64,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Outcome {
    /// Distinct processes signalled.
    pub signalled: usize,
    /// Of those, how many are dead now (zombies included).
    pub died: usize,
    /// Dead but not yet reaped.
    pub zombies: usize,
    /// Tagged members still running (not stopped, not dead) at the end.
    pub running: usize,
    pub elapsed_ms: f64,
    /// True when nothing of the subtree is left running.
    pub contained: bool,
    /// Members left alone because they are protected (an exec or a move
    /// made them so after they were tagged).
    pub spared: usize,
    /// The fork probe had condemned the subtree already, on its budget,
    /// before the agent acted.
    pub condemned_by_kernel: bool,
}

/// Signals every member of the subtree tagged `tag` until none is left
/// running, or `deadline` passes.
pub fn contain(
    sys: &impl System,
    tag: u64,
    members: &[Member],
    kind: ActionKind,
    deadline: Duration,
) -> Outcome {
    let started = Instant::now();
    let mut signalled = BTreeSet::new();
    let mut spared = BTreeSet::new();
    let condemned_by_kernel = sys.is_condemned(tag);
    if kind == ActionKind::Log {
        return Outcome {
            signalled: 0,
            died: 0,
            zombies: 0,
            running: 0,
            elapsed_ms: 0.0,
            contained: false,
            spared: 0,
            condemned_by_kernel,
        };
    }
    for m in members {
        sys.tag(m.tgid, m.born_ns, tag);
    }
    // Kill condemns with SIGKILL from the first instant: a member that forks
    // dies at that moment, so the subtree only shrinks. (Stopping first, as
    // a freezer would, lets every fork of a not-yet-stopped member leave a
    // new running child behind: measured, it let a bash bomb reach pids.max.)
    {
        let signal = kind.signal();
        sys.condemn(tag, signal);
        let pass_deadline = started + deadline;
        // A member killed by the fork probe leaves its newborn child behind
        // (tagged, running): the pass ends only after two empty looks.
        let mut empty_looks = 0;
        loop {
            let pending: Vec<u32> = sys
                .tagged(tag)
                .into_iter()
                // Still to signal: alive, and not already stopped by a stop pass.
                .filter(|t| !spared.contains(t))
                .filter(|&t| {
                    !matches!(
                        (signal, sys.state(t)),
                        (_, ProcState::Gone | ProcState::Zombie)
                            | (libc::SIGSTOP, ProcState::Stopped)
                    )
                })
                .collect();
            empty_looks = if pending.is_empty() {
                empty_looks + 1
            } else {
                0
            };
            if empty_looks == 2 || Instant::now() >= pass_deadline {
                break;
            }
            for tgid in pending {
                // Checked at the signal itself: a tag inherited in the
                // kernel knows nothing of --protect, and an exec may have
                // made a member something protected since it was tagged.
                if let Some(why) = sys.protected(tgid) {
                    // Protection is judged from /proc: a member that died
                    // meanwhile reads as outside the scope. It is no one
                    // to spare, and nothing to say.
                    if matches!(sys.state(tgid), ProcState::Gone | ProcState::Zombie) {
                        continue;
                    }
                    if spared.insert(tgid) {
                        tracing::info!("not signalling {tgid}: {why}");
                    }
                    continue;
                }
                if sys.signal_tagged(tgid, tag, signal) {
                    signalled.insert(tgid);
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    if kind == ActionKind::Kill {
        // Wait briefly for the last SIGKILLs to land before judging.
        let settle = Instant::now() + Duration::from_millis(200);
        while Instant::now() < settle
            && signalled
                .iter()
                .any(|&t| sys.state(t) == ProcState::Running)
        {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    sys.unbudget(tag);
    sys.release(tag);
    let states: Vec<ProcState> = signalled.iter().map(|&t| sys.state(t)).collect();
    let died = states
        .iter()
        .filter(|s| matches!(s, ProcState::Gone | ProcState::Zombie))
        .count();
    let zombies = states.iter().filter(|s| **s == ProcState::Zombie).count();
    let running = sys
        .tagged(tag)
        .into_iter()
        .filter(|t| !spared.contains(t))
        .filter(|&t| sys.state(t) == ProcState::Running)
        .count()
        + states.iter().filter(|s| **s == ProcState::Running).count();
    let contained = match kind {
        ActionKind::Kill => died == signalled.len() && running == 0,
        _ => running == 0,
    };
    Outcome {
        signalled: signalled.len(),
        died,
        zombies,
        running,
        elapsed_ms: started.elapsed().as_secs_f64() * 1e3,
        contained,
        spared: spared.len(),
        condemned_by_kernel,
    }
}

/// The real system: the kernel's LINEAGE and CONDEMNED maps, pidfds, /proc.
pub struct LiveSystem {
    lineage: Mutex<BpfHashMap<MapData, u32, u64>>,
    condemned: Mutex<BpfHashMap<MapData, u64, u32>>,
    budgets: Mutex<BpfHashMap<MapData, u64, guard_common::ForkBudget>>,
    protected_pids: Mutex<BpfHashMap<MapData, u32, u32>>,
    protected_exes: Mutex<BpfHashMap<MapData, guard_common::ExeId, u32>>,
    scope: Mutex<crate::kernel_scope::ScopeMaps>,
    protection: crate::protect::Protection,
    hierarchies: std::sync::Arc<crate::cgroup::Hierarchies>,
}

struct Pidfd(i32);

impl Pidfd {
    fn open(tgid: u32) -> Option<Pidfd> {
        // SAFETY: pidfd_open takes a pid and flags; it returns a new fd we own.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, tgid as libc::pid_t, 0) };
        (fd >= 0).then_some(Pidfd(fd as i32))
    }

    fn send(&self, signal: i32) -> bool {
        // SAFETY: the fd is a pidfd we own; a null siginfo is allowed.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0,
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            ) == 0
        }
    }
}

impl Drop for Pidfd {
    fn drop(&mut self) {
        // SAFETY: closes the fd this struct owns, once.
        unsafe { libc::close(self.0) };
    }
}

/// (state char, start time in clock ticks) of /proc/TGID/stat.
fn proc_stat(tgid: u32) -> Option<(char, u64)> {
    crate::procfs::stat(tgid).map(|s| (s.state, s.start_ticks))
}

/// A poisoned lock only means another thread panicked mid-call; the map
/// itself lives in the kernel and is still whole.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl System for LiveSystem {
    fn tag(&self, tgid: u32, born_ns: u64, tag: u64) -> bool {
        let Some(_pidfd) = Pidfd::open(tgid) else {
            return false;
        };
        // With the pidfd held, the pid cannot be reused; check it is the
        // process we mean (fork time and /proc's start time agree to a tick).
        let Some((state, start_ticks)) = proc_stat(tgid) else {
            return false;
        };
        if state == 'Z' {
            return false;
        }
        if born_ns != 0 {
            let born_ticks = born_ns / (1_000_000_000 / crate::procfs::clock_ticks_per_sec());
            if born_ticks.abs_diff(start_ticks) > 1 {
                return false;
            }
        }
        lock(&self.lineage).insert(tgid, tag, 0).is_ok()
    }

    fn condemn(&self, tag: u64, signal: i32) {
        if let Err(err) = lock(&self.condemned).insert(tag, signal as u32, 0) {
            tracing::warn!("could not condemn subtree {tag} in the kernel: {err}");
        }
    }

    fn release(&self, tag: u64) {
        let _ = lock(&self.condemned).remove(&tag);
    }

    fn tagged(&self, tag: u64) -> Vec<u32> {
        lock(&self.lineage)
            .iter()
            .filter_map(Result::ok)
            .filter(|&(_, t)| t == tag)
            .map(|(tgid, _)| tgid)
            .collect()
    }

    fn signal_tagged(&self, tgid: u32, tag: u64, signal: i32) -> bool {
        let Some(pidfd) = Pidfd::open(tgid) else {
            return false;
        };
        // The tag is removed when a process exits, before its pid can be
        // reused; checked with the pidfd held, it proves the identity.
        if lock(&self.lineage).get(&tgid, 0).ok() != Some(tag) {
            return false;
        }
        pidfd.send(signal)
    }

    fn protected(&self, tgid: u32) -> Option<&'static str> {
        self.protection.why_now(tgid, &self.hierarchies)
    }

    fn untag(&self, tgid: u32) {
        let _ = lock(&self.lineage).remove(&tgid);
    }

    fn budget(&self, tag: u64, live: u64, limits: BudgetLimits) {
        let budget = guard_common::ForkBudget {
            window_start_ns: crate::clock::WallClock::boot_ns_now(),
            window_ns: limits.window_ns,
            births: 0,
            live,
            min_live: live,
            max_births: limits.max_births,
            min_growth: limits.min_growth,
            signal: limits.signal as u32,
            min_depth: limits.min_depth,
            deep_births: 0,
            reserved: 0,
        };
        if let Err(err) = lock(&self.budgets).insert(tag, budget, 0) {
            tracing::warn!("could not give subtree {tag} a fork budget in the kernel: {err}");
        }
    }

    fn unbudget(&self, tag: u64) {
        let _ = lock(&self.budgets).remove(&tag);
    }

    fn tag_of(&self, tgid: u32) -> Option<u64> {
        lock(&self.lineage).get(&tgid, 0).ok()
    }

    fn is_condemned(&self, tag: u64) -> bool {
        lock(&self.condemned).get(&tag, 0).is_ok()
    }

    fn condemned_root(&self, root_tgid: u32) -> Option<u64> {
        lock(&self.condemned)
            .keys()
            .filter_map(Result::ok)
            .find(|&tag| guard_common::auto_tag_root(tag) == Some(root_tgid))
    }

    fn exempt_pid(&self, tgid: u32, exempt: bool) {
        let mut pids = lock(&self.protected_pids);
        let result = if exempt {
            pids.insert(tgid, 1, 0)
        } else {
            pids.remove(&tgid)
        };
        if let Err(err) = result {
            tracing::debug!("PROTECTED_PIDS: {err}");
        }
    }

    fn exempt_cgroup(&self, dir: &str) {
        if let Err(err) = lock(&self.scope).exempt(dir) {
            tracing::warn!("the fork probe cannot leave {dir} alone: {err:#}");
        }
    }

    fn state(&self, tgid: u32) -> ProcState {
        match proc_stat(tgid) {
            None => ProcState::Gone,
            Some(('Z' | 'X', _)) => ProcState::Zombie,
            Some(('T' | 't', _)) => ProcState::Stopped,
            Some(_) => ProcState::Running,
        }
    }
}

/// The kernel maps containment writes.
pub struct ResponseMaps {
    pub lineage: aya::maps::Map,
    pub condemned: aya::maps::Map,
    pub budgets: aya::maps::Map,
    pub protected_pids: aya::maps::Map,
    pub protected_exes: aya::maps::Map,
    /// The fork probe's scope (see `kernel_scope::ScopeMaps`).
    pub scope: crate::kernel_scope::ScopeMaps,
}

impl LiveSystem {
    pub fn new(
        maps: ResponseMaps,
        protection: crate::protect::Protection,
        hierarchies: std::sync::Arc<crate::cgroup::Hierarchies>,
    ) -> Result<Self> {
        Ok(Self {
            lineage: Mutex::new(BpfHashMap::try_from(maps.lineage).context("LINEAGE map")?),
            condemned: Mutex::new(BpfHashMap::try_from(maps.condemned).context("CONDEMNED map")?),
            budgets: Mutex::new(BpfHashMap::try_from(maps.budgets).context("BUDGETS map")?),
            protected_pids: Mutex::new(
                BpfHashMap::try_from(maps.protected_pids).context("PROTECTED_PIDS map")?,
            ),
            protected_exes: Mutex::new(
                BpfHashMap::try_from(maps.protected_exes).context("PROTECTED_EXES map")?,
            ),
            scope: Mutex::new(maps.scope),
            protection,
            hierarchies,
        })
    }

    /// Looks for the trusted executables again (an upgrade installs a new
    /// inode) and hands the new ones to the fork probe.
    pub fn refresh_trusted(&self) {
        let (names, paths) = crate::protect::trusted_names(self.protection.listed());
        let scan = crate::identity::scan(std::path::Path::new("/"), &names, &paths);
        let added = self.protection.trusted().extend(scan.found);
        let mut exes = lock(&self.protected_exes);
        for id in added {
            if let Err(err) = exes.insert(id, 1, 0) {
                tracing::warn!("the fork probe cannot learn a trusted executable: {err}");
            }
        }
    }

    /// Makes the fork probe see a scope cgroup removed or created again.
    pub fn follow_scope(&self, change: &crate::kernel_scope::ScopeChange) -> Result<()> {
        lock(&self.scope).apply(change)
    }
}

#[cfg(test)]
mod tests;
