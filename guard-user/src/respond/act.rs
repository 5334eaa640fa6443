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

use crate::respond::kernel_scope::BudgetLimits;
use crate::respond::policy::ActionKind;

/// How a process is doing, from /proc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcState {
    Gone,
    Zombie,
    Stopped,
    Running,
    /// /proc could not be read (out of descriptors, say): never taken for
    /// gone, so never for contained.
    Unknown,
}

/// What became of one attempt to reach a process (to tag or signal it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reach {
    Done,
    /// The pid is gone, or no longer carries the tag (someone else now).
    NotOurs,
    /// Opening or signalling failed for another reason (the error).
    Failed(String),
}

/// Everything containment needs from the system. Shared: the pipeline tags
/// members born while an action runs, as their fork events arrive.
pub trait System {
    /// Gives `tgid` the lineage tag, if it is still the process born at
    /// `born_ns` (0: unknown).
    fn tag(&self, tgid: u32, born_ns: u64, tag: u64) -> Reach;
    /// Makes the fork probe send `signal` to members of `tag` that fork.
    fn condemn(&self, tag: u64, signal: i32);
    /// Ends the condemnation (and the refusal that came with it).
    fn release(&self, tag: u64);
    /// Has the kernel refuse every fork and clone of `tag`'s members; true
    /// when that is in force (the LSM program is attached).
    fn refuse(&self, _tag: u64) -> bool {
        false
    }
    /// What the kernel refused of `tag`'s members so far; `None` when it
    /// does not refuse them (never did, or lifted).
    fn refusal(&self, _tag: u64) -> Option<guard_common::Refusal> {
        None
    }
    /// Ends a refusal: `tag`'s members may fork again.
    fn lift(&self, _tag: u64) {}
    /// Keeps the condemnation until no member of `tag` is left alive (or,
    /// for `SIGSTOP`, running): containment could not verify that.
    fn hold(&self, _tag: u64, _signal: i32) {}
    /// Processes that carry `tag` now.
    fn tagged(&self, tag: u64) -> Vec<u32>;
    /// What /proc says of `tgid` now, for the incident report (`None`:
    /// gone, or not looked at).
    fn inspect(&self, _tgid: u32) -> Option<crate::host::procfs::StatusDetail> {
        None
    }
    /// Signals `tgid` if it still carries `tag`.
    fn signal_tagged(&self, tgid: u32, tag: u64, signal: i32) -> Reach;
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
    /// Gives the cgroup directory `dir` (and what is below it) this verdict
    /// in the fork probe's scope: `SCOPE_PROTECTED` (left alone), or a
    /// softened `SCOPE_IN_*` action.
    fn scope_cgroup(&self, _dir: &str, _verdict: u32) {}
}

/// A member of the subtree to contain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    pub tgid: u32,
    pub born_ns: u64,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, schemars::JsonSchema)]
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
    /// Members whose state or signal failed for a reason other than being
    /// gone (out of descriptors, say): each one keeps `contained` false.
    pub errors: usize,
    /// The first such error.
    pub error: Option<String>,
    /// The kernel's condemnation is kept after the action: not every member
    /// was verified dead (or stopped); it is released once they are.
    pub condemnation_held: bool,
    /// Forks and clones of members the kernel refused while the action ran
    /// (a `stop` or `kill` refuses them from the verdict on), or from the
    /// verdict to now for a `refuse`; `null` where the kernel cannot refuse
    /// (no BPF LSM: see the `start` record's `refusal`).
    pub refused_forks: Option<u64>,
    /// Members born after the refusal was written, as the kernel counts
    /// them (`Refusal::slipped`): forks that had passed the hook before it
    /// and completed after. `null` where the kernel cannot refuse.
    pub slipped_forks: Option<u64>,
    /// A `refuse` action: the lineage's forks are refused from now on, until
    /// the refusal ends (see the `refusal` records). Its members are left
    /// running.
    pub refusing: bool,
    /// Per member, /proc/PID/status as read after the subtree was condemned
    /// and before its first signal (for the incident report, not the
    /// record; see [`capture`]).
    #[serde(skip)]
    pub captured: Vec<(u32, crate::host::procfs::StatusDetail)>,
    /// The processes signalled (the report names each one).
    #[serde(skip)]
    pub signalled_pids: Vec<u32>,
}

impl Outcome {
    /// Nothing done (`log`).
    fn nothing(condemned_by_kernel: bool) -> Self {
        Self {
            signalled: 0,
            died: 0,
            zombies: 0,
            running: 0,
            elapsed_ms: 0.0,
            contained: false,
            spared: 0,
            condemned_by_kernel,
            errors: 0,
            error: None,
            condemnation_held: false,
            refused_forks: None,
            slipped_forks: None,
            refusing: false,
            captured: Vec::new(),
            signalled_pids: Vec::new(),
        }
    }
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
    let mut errors = BTreeSet::new();
    let mut error = None;
    if !kind.acts() {
        return Outcome::nothing(condemned_by_kernel);
    }
    for m in members {
        if let Reach::Failed(why) = sys.tag(m.tgid, m.born_ns, tag) {
            errors.insert(m.tgid);
            error.get_or_insert(format!("tagging {}: {why}", m.tgid));
        }
    }
    let Some(signal) = kind.signal() else {
        let mut outcome = refuse(sys, tag, started, condemned_by_kernel, errors.len(), error);
        outcome.captured = capture(sys, tag);
        return outcome;
    };
    // Kill condemns with SIGKILL from the first instant: a member that forks
    // dies at that moment, so the subtree only shrinks. (Stopping first, as
    // a freezer would, lets every fork of a not-yet-stopped member leave a
    // new running child behind: measured, it let a bash bomb reach pids.max.)
    // Where the LSM program is attached, the condemnation refuses the fork
    // too: the member dies without leaving a child.
    let captured;
    {
        sys.condemn(tag, signal);
        // Nothing of the subtree can grow now: what it was is read before
        // it is signalled.
        captured = capture(sys, tag);
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
                    // meanwhile, or is exiting (past cgroup_exit its cgroup
                    // reads as the root, outside the scope; the exit probe
                    // took its tag before that), is no one to spare, and
                    // nothing to say.
                    if matches!(sys.state(tgid), ProcState::Gone | ProcState::Zombie)
                        || sys.tag_of(tgid) != Some(tag)
                    {
                        continue;
                    }
                    if spared.insert(tgid) {
                        tracing::info!("not signalling {tgid}: {why}");
                    }
                    continue;
                }
                match sys.signal_tagged(tgid, tag, signal) {
                    Reach::Done => {
                        signalled.insert(tgid);
                    }
                    Reach::NotOurs => {}
                    Reach::Failed(why) => {
                        errors.insert(tgid);
                        error.get_or_insert(format!("signalling {tgid}: {why}"));
                    }
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
    // Verified from the kernel's own view: the tags left (the exit probe
    // removes a member's at its death) and /proc for each one; a member
    // that could not be tagged is an error already.
    let states: Vec<ProcState> = signalled.iter().map(|&t| sys.state(t)).collect();
    let died = states
        .iter()
        .filter(|s| matches!(s, ProcState::Gone | ProcState::Zombie))
        .count();
    let zombies = states.iter().filter(|s| **s == ProcState::Zombie).count();
    let mut left = BTreeSet::new();
    let candidates: BTreeSet<u32> = sys
        .tagged(tag)
        .into_iter()
        .chain(signalled.iter().copied())
        .filter(|t| !spared.contains(t))
        .collect();
    for t in candidates {
        match sys.state(t) {
            ProcState::Running => {
                left.insert(t);
            }
            ProcState::Stopped if kind == ActionKind::Kill => {
                left.insert(t);
            }
            ProcState::Unknown if errors.insert(t) => {
                error.get_or_insert(format!("reading /proc/{t}: not readable now"));
            }
            _ => {}
        }
    }
    let running = left.len();
    let contained = running == 0 && errors.is_empty();
    let refusal = sys.refusal(tag);
    // The condemnation ends only once its members are verified gone (or
    // stopped): until then a member that forks is still signalled.
    let held = !contained;
    if held {
        sys.hold(tag, signal);
    } else {
        sys.release(tag);
    }
    Outcome {
        signalled: signalled.len(),
        died,
        zombies,
        running,
        elapsed_ms: started.elapsed().as_secs_f64() * 1e3,
        contained,
        spared: spared.len(),
        condemned_by_kernel,
        errors: errors.len(),
        error,
        condemnation_held: held,
        refused_forks: refusal.map(|r| r.refused),
        slipped_forks: refusal.map(|r| r.slipped),
        refusing: false,
        captured,
        signalled_pids: signalled.into_iter().collect(),
    }
}

/// Members whose /proc a report captures at most, and for how long: a
/// bomb's thousands of members must not hold back its signals (the rest
/// are named from the process table alone).
const CAPTURE_MEMBERS: usize = 512;
const CAPTURE_TIME: Duration = Duration::from_millis(10);

/// Each member's /proc/PID/status, within those bounds.
fn capture(sys: &impl System, tag: u64) -> Vec<(u32, crate::host::procfs::StatusDetail)> {
    let until = Instant::now() + CAPTURE_TIME;
    let mut out = Vec::new();
    for tgid in sys.tagged(tag).into_iter().take(CAPTURE_MEMBERS) {
        if Instant::now() >= until {
            break;
        }
        if let Some(detail) = sys.inspect(tgid) {
            out.push((tgid, detail));
        }
    }
    out
}

/// A `refuse`: the members are tagged (by the caller); from now on the
/// kernel refuses their forks. Nobody is signalled; the members are
/// counted as running.
fn refuse(
    sys: &impl System,
    tag: u64,
    started: Instant,
    condemned_by_kernel: bool,
    errors: usize,
    error: Option<String>,
) -> Outcome {
    let refusing = sys.refuse(tag);
    let refusal = sys.refusal(tag);
    let running = sys
        .tagged(tag)
        .into_iter()
        .filter(|&t| matches!(sys.state(t), ProcState::Running | ProcState::Stopped))
        .count();
    let error = match (refusing, error) {
        (false, None) => Some("the kernel cannot refuse forks here (no BPF LSM)".to_owned()),
        (_, error) => error,
    };
    Outcome {
        running,
        elapsed_ms: started.elapsed().as_secs_f64() * 1e3,
        errors,
        error,
        refused_forks: refusal.map(|r| r.refused),
        slipped_forks: refusal.map(|r| r.slipped),
        refusing,
        ..Outcome::nothing(condemned_by_kernel)
    }
}

/// The real system: the kernel's LINEAGE and CONDEMNED maps, pidfds, /proc.
pub struct LiveSystem {
    lineage: Mutex<BpfHashMap<MapData, u32, u64>>,
    condemned: Mutex<BpfHashMap<MapData, u64, u32>>,
    refusals: Mutex<BpfHashMap<MapData, u64, guard_common::Refusal>>,
    /// The LSM program is attached: an entry in `refusals` refuses forks.
    /// Set once it is (after the maps are filled).
    refusing: std::sync::atomic::AtomicBool,
    budgets: Mutex<BpfHashMap<MapData, u64, guard_common::ForkBudget>>,
    protected_pids: Mutex<BpfHashMap<MapData, u32, u32>>,
    protected_exes: Mutex<BpfHashMap<MapData, guard_common::ExeId, u32>>,
    scope: Mutex<crate::respond::kernel_scope::ScopeMaps>,
    protection: crate::respond::protect::Protection,
    hierarchies: std::sync::Arc<crate::host::cgroup::Hierarchies>,
    reserve: Mutex<FdReserve>,
    /// Condemnations kept after their action: (tag, signal).
    held: Mutex<Vec<(u64, i32)>>,
}

struct Pidfd(i32);

impl Pidfd {
    /// `Ok(None)` when no such process exists; `Err` for anything else
    /// (out of descriptors: the process is not gone for that).
    fn open(tgid: u32) -> std::io::Result<Option<Pidfd>> {
        // SAFETY: pidfd_open takes a pid and flags; it returns a new fd we own.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, tgid as libc::pid_t, 0) };
        if fd >= 0 {
            return Ok(Some(Pidfd(fd as i32)));
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ESRCH) {
            Ok(None)
        } else {
            Err(err)
        }
    }

    fn send(&self, signal: i32) -> Reach {
        // SAFETY: the fd is a pidfd we own; a null siginfo is allowed.
        let sent = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0,
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            ) == 0
        };
        if sent {
            return Reach::Done;
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ESRCH) {
            Reach::NotOurs
        } else {
            Reach::Failed(err.to_string())
        }
    }
}

/// Descriptors kept open for enforcement alone: when a descriptor cannot
/// be had (EMFILE, ENFILE: someone holds the rest), containment closes
/// these and tries again, so that opening a pidfd or reading /proc never
/// fails for want of one; they are opened again after the action.
struct FdReserve {
    fds: Vec<i32>,
}

/// Descriptors in the reserve.
const FD_RESERVE: usize = 32;

impl FdReserve {
    fn new() -> Self {
        let mut reserve = Self { fds: Vec::new() };
        reserve.fill();
        reserve
    }

    fn fill(&mut self) {
        while self.fds.len() < FD_RESERVE {
            // SAFETY: opens /dev/null read-only; the fd is ours to close.
            let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
            if fd < 0 {
                break;
            }
            self.fds.push(fd);
        }
    }

    /// Frees the reserve; true when there was something to free.
    fn spend(&mut self) -> bool {
        let had = !self.fds.is_empty();
        for fd in self.fds.drain(..) {
            // SAFETY: closes an fd this struct opened, once.
            unsafe { libc::close(fd) };
        }
        had
    }
}

impl Drop for FdReserve {
    fn drop(&mut self) {
        self.spend();
    }
}

/// Whether an error is the want of a descriptor.
fn out_of_fds(err: &std::io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Raises this process's soft descriptor limit to its hard limit (a
/// service gets 1024 by default; the metrics server and /proc reads under
/// a bomb want more). Returns the limit now in force.
pub fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raw const raised) == 0 {
                limit = raised;
            }
        }
    }
    limit.rlim_cur
}

impl Drop for Pidfd {
    fn drop(&mut self) {
        // SAFETY: closes the fd this struct owns, once.
        unsafe { libc::close(self.0) };
    }
}

/// (state char, start time in clock ticks) of /proc/TGID/stat; `Ok(None)`
/// when the process is gone.
fn proc_stat(tgid: u32) -> std::io::Result<Option<(char, u64)>> {
    crate::host::procfs::stat_checked(tgid).map(|s| s.map(|s| (s.state, s.start_ticks)))
}

/// A poisoned lock only means another thread panicked mid-call; the map
/// itself lives in the kernel and is still whole.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl LiveSystem {
    /// `op`, tried once more with the descriptor reserve freed when it
    /// fails for want of a descriptor.
    fn with_fds<T>(&self, op: impl Fn() -> std::io::Result<T>) -> std::io::Result<T> {
        match op() {
            Err(err) if out_of_fds(&err) && lock(&self.reserve).spend() => {
                tracing::warn!("out of descriptors while containing: using the reserve");
                op()
            }
            other => other,
        }
    }
}

impl System for LiveSystem {
    fn inspect(&self, tgid: u32) -> Option<crate::host::procfs::StatusDetail> {
        crate::host::procfs::status_detail(tgid)
    }
    fn tag(&self, tgid: u32, born_ns: u64, tag: u64) -> Reach {
        let _pidfd = match self.with_fds(|| Pidfd::open(tgid)) {
            Ok(Some(fd)) => fd,
            Ok(None) => return Reach::NotOurs,
            Err(err) => return Reach::Failed(format!("pidfd_open: {err}")),
        };
        // With the pidfd held, the pid cannot be reused; check it is the
        // process we mean (fork time and /proc's start time agree to a tick).
        let (state, start_ticks) = match self.with_fds(|| proc_stat(tgid)) {
            Ok(Some(stat)) => stat,
            Ok(None) => return Reach::NotOurs,
            Err(err) => return Reach::Failed(format!("reading /proc/{tgid}/stat: {err}")),
        };
        if state == 'Z' {
            return Reach::NotOurs;
        }
        if born_ns != 0 {
            let born_ticks = born_ns / (1_000_000_000 / crate::host::procfs::clock_ticks_per_sec());
            if born_ticks.abs_diff(start_ticks) > 1 {
                return Reach::NotOurs;
            }
        }
        match lock(&self.lineage).insert(tgid, tag, 0) {
            Ok(()) => Reach::Done,
            Err(err) => Reach::Failed(format!("LINEAGE: {err}")),
        }
    }

    fn condemn(&self, tag: u64, signal: i32) {
        // Refused first: from here on a member's fork fails (and the LSM
        // program signals it) instead of leaving a child to find.
        self.refuse(tag);
        if let Err(err) = lock(&self.condemned).insert(tag, signal as u32, 0) {
            tracing::warn!("could not condemn subtree {tag} in the kernel: {err}");
        }
    }

    fn release(&self, tag: u64) {
        let _ = lock(&self.condemned).remove(&tag);
        self.lift(tag);
    }

    fn refuse(&self, tag: u64) -> bool {
        if !self.refusing() {
            return false;
        }
        // Kept when there is one (the fork probe refused the subtree by
        // itself): its count goes on.
        let mut refusals = lock(&self.refusals);
        if refusals.get(&tag, 0).is_ok() {
            return true;
        }
        match refusals.insert(tag, guard_common::Refusal::default(), 0) {
            Ok(()) => true,
            Err(err) => {
                tracing::warn!("could not refuse the forks of subtree {tag} in the kernel: {err}");
                false
            }
        }
    }

    fn refusal(&self, tag: u64) -> Option<guard_common::Refusal> {
        if !self.refusing() {
            return None;
        }
        lock(&self.refusals).get(&tag, 0).ok()
    }

    fn lift(&self, tag: u64) {
        let _ = lock(&self.refusals).remove(&tag);
    }

    fn tagged(&self, tag: u64) -> Vec<u32> {
        lock(&self.lineage)
            .iter()
            .filter_map(Result::ok)
            .filter(|&(_, t)| t == tag)
            .map(|(tgid, _)| tgid)
            .collect()
    }

    fn signal_tagged(&self, tgid: u32, tag: u64, signal: i32) -> Reach {
        let pidfd = match self.with_fds(|| Pidfd::open(tgid)) {
            Ok(Some(fd)) => fd,
            Ok(None) => return Reach::NotOurs,
            Err(err) => return Reach::Failed(format!("pidfd_open: {err}")),
        };
        // The tag is removed when a process exits, before its pid can be
        // reused; checked with the pidfd held, it proves the identity.
        if lock(&self.lineage).get(&tgid, 0).ok() != Some(tag) {
            return Reach::NotOurs;
        }
        pidfd.send(signal)
    }

    fn hold(&self, tag: u64, signal: i32) {
        lock(&self.held).push((tag, signal));
    }

    fn protected(&self, tgid: u32) -> Option<&'static str> {
        self.protection.why_now(tgid, &self.hierarchies)
    }

    fn untag(&self, tgid: u32) {
        let _ = lock(&self.lineage).remove(&tgid);
    }

    fn budget(&self, tag: u64, live: u64, limits: BudgetLimits) {
        let budget = guard_common::ForkBudget {
            window_start_ns: crate::host::clock::WallClock::boot_ns_now(),
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
            || (self.refusing() && lock(&self.refusals).get(&tag, 0).is_ok())
    }

    fn condemned_root(&self, root_tgid: u32) -> Option<u64> {
        let ours = |tag: &u64| guard_common::auto_tag_root(*tag) == Some(root_tgid);
        let condemned = lock(&self.condemned)
            .keys()
            .filter_map(Result::ok)
            .find(ours);
        // A `refuse` budget only refuses.
        condemned.or_else(|| {
            lock(&self.refusals)
                .keys()
                .filter_map(Result::ok)
                .find(ours)
        })
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

    fn scope_cgroup(&self, dir: &str, verdict: u32) {
        if let Err(err) = lock(&self.scope).set(dir, verdict) {
            tracing::warn!("the fork probe cannot take {dir}'s policy: {err:#}");
        }
    }

    fn state(&self, tgid: u32) -> ProcState {
        match self.with_fds(|| proc_stat(tgid)) {
            Ok(None) => ProcState::Gone,
            Ok(Some(('Z' | 'X', _))) => ProcState::Zombie,
            Ok(Some(('T' | 't', _))) => ProcState::Stopped,
            Ok(Some(_)) => ProcState::Running,
            Err(_) => ProcState::Unknown,
        }
    }
}

/// The kernel maps containment writes.
pub struct ResponseMaps {
    pub lineage: aya::maps::Map,
    pub condemned: aya::maps::Map,
    pub refusals: aya::maps::Map,
    pub budgets: aya::maps::Map,
    pub protected_pids: aya::maps::Map,
    pub protected_exes: aya::maps::Map,
    /// The fork probe's scope (see `kernel_scope::ScopeMaps`).
    pub scope: crate::respond::kernel_scope::ScopeMaps,
}

impl LiveSystem {
    pub fn new(
        maps: ResponseMaps,
        protection: crate::respond::protect::Protection,
        hierarchies: std::sync::Arc<crate::host::cgroup::Hierarchies>,
    ) -> Result<Self> {
        Ok(Self {
            lineage: Mutex::new(BpfHashMap::try_from(maps.lineage).context("LINEAGE map")?),
            condemned: Mutex::new(BpfHashMap::try_from(maps.condemned).context("CONDEMNED map")?),
            refusals: Mutex::new(BpfHashMap::try_from(maps.refusals).context("REFUSALS map")?),
            refusing: std::sync::atomic::AtomicBool::new(false),
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
            reserve: Mutex::new(FdReserve::new()),
            held: Mutex::new(Vec::new()),
        })
    }

    /// The LSM program that refuses forks is attached: refusals are in
    /// force from now on.
    pub fn set_refusing(&self) {
        self.refusing
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn refusing(&self) -> bool {
        self.refusing.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Opens the descriptor reserve again (after an action spent it), and
    /// releases the condemnations held until their members were gone (or
    /// stopped, for SIGSTOP). Returns the tags released.
    pub fn settle(&self) -> Vec<u64> {
        lock(&self.reserve).fill();
        let held: Vec<(u64, i32)> = std::mem::take(&mut *lock(&self.held));
        let mut released = Vec::new();
        for (tag, signal) in held {
            let alive = self.tagged(tag).into_iter().any(|t| {
                matches!(
                    (signal, self.state(t)),
                    (_, ProcState::Running | ProcState::Unknown)
                        | (libc::SIGKILL, ProcState::Stopped)
                )
            });
            if alive {
                lock(&self.held).push((tag, signal));
            } else {
                self.release(tag);
                released.push(tag);
            }
        }
        released
    }

    /// Looks for the trusted executables again (an upgrade installs a new
    /// inode) and hands the new ones to the fork probe.
    pub fn refresh_trusted(&self) {
        let scan = crate::respond::protect::scan_trusted(self.protection.listed());
        let added = self.protection.trusted().extend(scan.found);
        let mut exes = lock(&self.protected_exes);
        for id in added {
            if let Err(err) = exes.insert(id, 1, 0) {
                tracing::warn!("the fork probe cannot learn a trusted executable: {err}");
            }
        }
    }

    /// Makes the fork probe see a scope cgroup removed or created again.
    pub fn follow_scope(&self, change: &crate::respond::kernel_scope::ScopeChange) -> Result<()> {
        lock(&self.scope).apply(change)
    }
}

#[cfg(test)]
mod tests;
