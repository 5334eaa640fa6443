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
//!    until none is left running: SIGSTOP for `stop`; SIGSTOP, then SIGKILL
//!    for `kill`.
//!
//! Members are judged by live processes: a killed member stays a zombie
//! until its (adoptive) parent reaps it, still holding a pids.current slot;
//! the outcome says how many zombies remain.
//!
//! [`System`] is the seam: [`LiveSystem`] does it for real, tests record.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::maps::{HashMap as BpfHashMap, MapData};

/// What a detector's verdict leads to (`--fork-action`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ActionKind {
    /// Alert only.
    Log,
    /// Freeze the whole offending subtree (SIGSTOP).
    Stop,
    /// Stop, then kill the whole offending subtree (SIGKILL).
    Kill,
}

/// How a process is doing, from /proc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcState {
    Gone,
    Zombie,
    Stopped,
    Running,
}

/// Everything containment needs from the system.
pub trait System {
    /// Gives `tgid` the lineage tag, if it is still the process born at
    /// `born_ns` (0: unknown). False when it is gone or someone else.
    fn tag(&mut self, tgid: u32, born_ns: u64, tag: u64) -> bool;
    /// Makes the fork probe send `signal` to members of `tag` that fork.
    fn condemn(&mut self, tag: u64, signal: i32);
    /// Ends the condemnation.
    fn release(&mut self, tag: u64);
    /// Processes that carry `tag` now.
    fn tagged(&self, tag: u64) -> Vec<u32>;
    /// Signals `tgid` if it still carries `tag`. True when sent.
    fn signal_tagged(&mut self, tgid: u32, tag: u64, signal: i32) -> bool;
    fn state(&self, tgid: u32) -> ProcState;
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
}

/// Signals every member of the subtree tagged `tag` until none is left
/// running, or `deadline` passes.
pub fn contain(
    sys: &mut impl System,
    tag: u64,
    members: &[Member],
    kind: ActionKind,
    deadline: Duration,
) -> Outcome {
    let started = Instant::now();
    let mut signalled = BTreeSet::new();
    if kind == ActionKind::Log {
        return Outcome {
            signalled: 0,
            died: 0,
            zombies: 0,
            running: 0,
            elapsed_ms: 0.0,
            contained: false,
        };
    }
    for m in members {
        sys.tag(m.tgid, m.born_ns, tag);
    }
    let passes: &[i32] = match kind {
        ActionKind::Stop => &[libc::SIGSTOP],
        _ => &[libc::SIGSTOP, libc::SIGKILL],
    };
    for &signal in passes {
        sys.condemn(tag, signal);
        let pass_deadline = started + deadline;
        loop {
            let pending: Vec<u32> = sys
                .tagged(tag)
                .into_iter()
                .filter(|&t| match (signal, sys.state(t)) {
                    (_, ProcState::Gone | ProcState::Zombie) => false,
                    (libc::SIGSTOP, ProcState::Stopped) => false,
                    _ => true,
                })
                .collect();
            if pending.is_empty() || Instant::now() >= pass_deadline {
                break;
            }
            for tgid in pending {
                if sys.signal_tagged(tgid, tag, signal) {
                    signalled.insert(tgid);
                }
            }
            std::thread::sleep(Duration::from_millis(1));
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
    }
}

/// The real system: the kernel's LINEAGE and CONDEMNED maps, pidfds, /proc.
pub struct LiveSystem {
    pub lineage: BpfHashMap<MapData, u32, u64>,
    pub condemned: BpfHashMap<MapData, u64, u32>,
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
    let stat = std::fs::read_to_string(format!("/proc/{tgid}/stat")).ok()?;
    let rest: Vec<&str> = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    Some((rest.first()?.chars().next()?, rest.get(19)?.parse().ok()?))
}

fn ticks_per_sec() -> u64 {
    // SAFETY: sysconf reads a constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

impl System for LiveSystem {
    fn tag(&mut self, tgid: u32, born_ns: u64, tag: u64) -> bool {
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
            let born_ticks = born_ns / (1_000_000_000 / ticks_per_sec());
            if born_ticks.abs_diff(start_ticks) > 1 {
                return false;
            }
        }
        self.lineage.insert(tgid, tag, 0).is_ok()
    }

    fn condemn(&mut self, tag: u64, signal: i32) {
        if let Err(err) = self.condemned.insert(tag, signal as u32, 0) {
            tracing::warn!("could not condemn subtree {tag} in the kernel: {err}");
        }
    }

    fn release(&mut self, tag: u64) {
        let _ = self.condemned.remove(&tag);
    }

    fn tagged(&self, tag: u64) -> Vec<u32> {
        self.lineage
            .iter()
            .filter_map(Result::ok)
            .filter(|&(_, t)| t == tag)
            .map(|(tgid, _)| tgid)
            .collect()
    }

    fn signal_tagged(&mut self, tgid: u32, tag: u64, signal: i32) -> bool {
        let Some(pidfd) = Pidfd::open(tgid) else {
            return false;
        };
        // The tag is removed when a process exits, before its pid can be
        // reused; checked with the pidfd held, it proves the identity.
        if self.lineage.get(&tgid, 0).ok() != Some(tag) {
            return false;
        }
        pidfd.send(signal)
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

impl LiveSystem {
    pub fn new(lineage: aya::maps::Map, condemned: aya::maps::Map) -> Result<Self> {
        Ok(Self {
            lineage: BpfHashMap::try_from(lineage).context("LINEAGE map")?,
            condemned: BpfHashMap::try_from(condemned).context("CONDEMNED map")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// A fake system where a condemned, running member forks a child every
    /// round (as a bomb does) unless the probe's signal gets it first.
    #[derive(Default)]
    struct Bomb {
        procs: HashMap<u32, (ProcState, Option<u64>)>,
        condemned: HashMap<u64, i32>,
        next_pid: u32,
        log: Vec<(u32, i32)>,
    }

    impl Bomb {
        fn with(members: &[u32]) -> Self {
            let mut b = Bomb {
                next_pid: 1000,
                ..Default::default()
            };
            for &m in members {
                b.procs.insert(m, (ProcState::Running, None));
            }
            b
        }

        fn apply(&mut self, tgid: u32, signal: i32) {
            if let Some(p) = self.procs.get_mut(&tgid) {
                p.0 = match signal {
                    libc::SIGKILL => ProcState::Zombie,
                    libc::SIGSTOP => ProcState::Stopped,
                    _ => p.0,
                };
            }
        }
    }

    impl System for Bomb {
        fn tag(&mut self, tgid: u32, _born: u64, tag: u64) -> bool {
            match self.procs.get_mut(&tgid) {
                Some(p) if p.0 != ProcState::Gone => {
                    p.1 = Some(tag);
                    true
                }
                _ => false,
            }
        }
        fn condemn(&mut self, tag: u64, signal: i32) {
            self.condemned.insert(tag, signal);
            // Every running tagged member tries to fork once: the probe
            // signals it, the child inherits the tag.
            let forkers: Vec<(u32, u64)> = self
                .procs
                .iter()
                .filter(|(_, p)| p.0 == ProcState::Running)
                .filter_map(|(&t, p)| Some((t, p.1?)))
                .collect();
            for (t, tag) in forkers {
                self.next_pid += 1;
                self.procs
                    .insert(self.next_pid, (ProcState::Running, Some(tag)));
                self.apply(t, signal);
            }
        }
        fn release(&mut self, tag: u64) {
            self.condemned.remove(&tag);
        }
        fn tagged(&self, tag: u64) -> Vec<u32> {
            self.procs
                .iter()
                .filter(|(_, p)| p.1 == Some(tag) && p.0 != ProcState::Gone)
                .map(|(&t, _)| t)
                .collect()
        }
        fn signal_tagged(&mut self, tgid: u32, tag: u64, signal: i32) -> bool {
            if self.procs.get(&tgid).and_then(|p| p.1) != Some(tag) {
                return false;
            }
            self.log.push((tgid, signal));
            self.apply(tgid, signal);
            true
        }
        fn state(&self, tgid: u32) -> ProcState {
            self.procs.get(&tgid).map_or(ProcState::Gone, |p| p.0)
        }
    }

    #[test]
    fn kill_converges_on_members_born_while_acting() {
        let mut sys = Bomb::with(&[10, 11, 12]);
        // An unrelated process in the same cgroup.
        sys.procs.insert(99, (ProcState::Running, None));
        let members: Vec<Member> = [10, 11, 12]
            .iter()
            .map(|&tgid| Member { tgid, born_ns: 0 })
            .collect();
        let out = contain(
            &mut sys,
            7,
            &members,
            ActionKind::Kill,
            Duration::from_secs(1),
        );
        assert!(out.contained, "{out:?}");
        assert_eq!(out.running, 0);
        assert_eq!(
            out.signalled, 6,
            "3 members and the 3 children they forked under condemnation"
        );
        assert_eq!(out.died, 6);
        assert_eq!(out.zombies, 6);
        assert_eq!(
            sys.state(99),
            ProcState::Running,
            "the bystander is untouched"
        );
        assert!(sys.log.iter().all(|&(t, _)| t != 99));
        assert!(sys.condemned.is_empty(), "condemnation released");
        // Stop came before kill for every member.
        for t in [10, 11, 12] {
            let signals: Vec<i32> = sys.log.iter().filter(|l| l.0 == t).map(|l| l.1).collect();
            assert!(
                signals.is_empty() || signals.last() == Some(&libc::SIGKILL),
                "{t}: {signals:?}"
            );
        }
    }

    #[test]
    fn stop_leaves_everyone_stopped_and_log_does_nothing() {
        let mut sys = Bomb::with(&[20, 21]);
        let members = [
            Member {
                tgid: 20,
                born_ns: 0,
            },
            Member {
                tgid: 21,
                born_ns: 0,
            },
        ];
        let out = contain(
            &mut sys,
            8,
            &members,
            ActionKind::Stop,
            Duration::from_secs(1),
        );
        assert!(
            out.contained && out.died == 0 && out.running == 0,
            "{out:?}"
        );
        assert!(sys.procs.values().all(|p| p.0 == ProcState::Stopped));
        let mut quiet = Bomb::with(&[30]);
        let out = contain(
            &mut quiet,
            9,
            &[Member {
                tgid: 30,
                born_ns: 0,
            }],
            ActionKind::Log,
            Duration::from_secs(1),
        );
        assert_eq!(out.signalled, 0);
        assert!(quiet.log.is_empty() && quiet.condemned.is_empty());
    }
}
