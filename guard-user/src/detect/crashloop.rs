//! The crash-loop detector. Pure: process exits and a clock in, verdicts
//! out; no I/O.
//!
//! **Crash.** A process that ends with a non-zero exit code, or is killed
//! by its own fault (SIGSEGV, SIGABRT, SIGBUS, SIGILL, SIGFPE, SIGSYS,
//! SIGTRAP) or by the OOM killer, after living less than
//! `--crashloop-lifetime` (default 30 s): a program that runs for minutes
//! between failures is not looping. Any other signal is sent by someone
//! else (an operator, a supervisor stopping it, guard or another agent
//! containing a bomb): the program did not crash.
//!
//! **Restart, not retry.** What a program is called says nothing (`ls`,
//! `curl`, `pg_isready`, `systemctl is-active` all answer with non-zero
//! codes), so the rule reads what its starter does:
//! - the same command (program, arguments, cgroup) started again by the
//!   same process, with **nothing else started between** its runs, is a
//!   *restart* (`while true; do ./server; done`, supervisord, runsv,
//!   systemd's `Restart=`: a supervisor may wait, but runs nothing else);
//! - a command run **between other programs** (a script's `ls` and `stat`,
//!   `until probe; do sleep 1; done`'s `sleep`) is a script's step or a
//!   paced *retry*: never a crash loop, whatever its exit codes;
//! - a run that **succeeds** (exit 0), or lives past the lifetime, ends the
//!   loop: the service came up, the probe got its answer.
//!
//! **Loop.** `N` restarts that crashed within a window (`--crashloop
//! N/SECS`, default 5 in 60 s), most of them back to back (a supervisor
//! running two failing programs in turn still counts): one alert per loop
//! and window, naming the program, the cgroup and its systemd unit when
//! the path names one, the supervisor, the recent exit codes or signals,
//! the count and the rate. Early: it is a report, never an action.
//!
//! **Sustained.** A loop that has gone on without a break (no success, no
//! quiet window) for `--crashloop-stop-after N/SECS` (default 20 crashes
//! over 120 s or more), with the program **running at least half that
//! time** ([`BUSY`]: it started up and died, again and again, instead of
//! answering a probe between long waits), is sustained: a boot-time wait
//! for a service is long over, and the program has been restarted dozens of
//! times. It gets one more alert, and only it may lead to
//! `--crashloop-action stop`.

use std::{
    collections::{HashMap, VecDeque},
    hash::{BuildHasher, RandomState},
    sync::Arc,
};

use super::switches::Ignore;
use crate::kernel::decode::ExitStatus;

const NS: u64 = 1_000_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrashLoopRules {
    /// Crashes that make a loop...
    pub count: u32,
    /// ...within this window.
    pub window_ns: u64,
    /// A process that lived longer did not crash on start.
    pub max_lifetime_ns: u64,
    /// A loop is sustained after this many crashes...
    pub sustained_count: u32,
    /// ...spanning at least this long, without a break.
    pub sustained_ns: u64,
}

/// `--crashloop`, by default: 5 crashes within 60 s.
pub const DEFAULT_COUNT: u32 = 5;
pub const DEFAULT_WINDOW_SECS: u64 = 60;
/// `--crashloop-lifetime`, by default.
pub const DEFAULT_LIFETIME_SECS: u64 = 30;
/// `--crashloop-stop-after`, by default: 20 crashes over 120 s.
pub const DEFAULT_SUSTAINED_COUNT: u32 = 20;
pub const DEFAULT_SUSTAINED_SECS: u64 = 120;

impl Default for CrashLoopRules {
    fn default() -> Self {
        Self {
            count: DEFAULT_COUNT,
            window_ns: DEFAULT_WINDOW_SECS * NS,
            max_lifetime_ns: DEFAULT_LIFETIME_SECS * NS,
            sustained_count: DEFAULT_SUSTAINED_COUNT,
            sustained_ns: DEFAULT_SUSTAINED_SECS * NS,
        }
    }
}

/// `--crashloop`: `N/SECS`, or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrashLoopSetting(pub Option<(u32, u64)>);

impl CrashLoopSetting {
    pub const DEFAULT: Self = Self(Some((DEFAULT_COUNT, DEFAULT_WINDOW_SECS)));
}

/// As `--crashloop` takes it (`N/SECS` or `off`).
impl std::fmt::Display for CrashLoopSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some((count, secs)) => write!(f, "{count}/{secs}"),
            None => f.write_str("off"),
        }
    }
}

/// `--crashloop-stop-after`: `N/SECS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SustainedSetting(pub u32, pub u64);

impl SustainedSetting {
    pub const DEFAULT: Self = Self(DEFAULT_SUSTAINED_COUNT, DEFAULT_SUSTAINED_SECS);
}

impl std::fmt::Display for SustainedSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.0, self.1)
    }
}

/// Parses `N/SECS` for `--crashloop-stop-after` (SECS may be 0: count only).
pub fn parse_sustained(text: &str) -> Result<SustainedSetting, String> {
    let (n, secs) = split_rule(text)?;
    if !(2..=1_000_000).contains(&n) || secs > 86_400 {
        return Err(format!(
            "{text:?}: 2 to 1000000 crashes over 0 to 86400 seconds"
        ));
    }
    Ok(SustainedSetting(n, secs))
}

/// Parses `N/SECS` (e.g. `5/60`) or `off`.
pub fn parse_setting(text: &str) -> Result<CrashLoopSetting, String> {
    if text.trim() == "off" {
        return Ok(CrashLoopSetting(None));
    }
    parse_rule(text).map(|rule| CrashLoopSetting(Some(rule)))
}

fn split_rule(text: &str) -> Result<(u32, u64), String> {
    let (n, secs) = text
        .split_once('/')
        .ok_or_else(|| format!("{text:?}: expected N/SECS, e.g. 5/60"))?;
    let n: u32 = n
        .trim()
        .parse()
        .map_err(|_| format!("{text:?}: {n:?} is not a count"))?;
    let secs: u64 = secs
        .trim()
        .parse()
        .map_err(|_| format!("{text:?}: {secs:?} is not a number of seconds"))?;
    Ok((n, secs))
}

/// Parses `N/SECS` (e.g. `5/60`).
pub fn parse_rule(text: &str) -> Result<(u32, u64), String> {
    let (n, secs) = split_rule(text)?;
    if !(2..=10_000).contains(&n) || !(1..=86_400).contains(&secs) {
        return Err(format!(
            "{text:?}: 2 to 10000 crashes within 1 to 86400 seconds"
        ));
    }
    Ok((n, secs))
}

/// What identifies one looping service.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LoopKey {
    /// The program (exec filename, else comm).
    pub program: Arc<str>,
    /// Its arguments at exec, when known.
    pub args: Option<Arc<[String]>>,
    pub cgroup: Option<Arc<str>>,
    /// The process that started it (its fork-time parent): the one that
    /// restarts it, when it is restarted.
    pub supervisor: u32,
}

/// One process exit, as the detector needs it.
#[derive(Clone, Debug)]
pub struct ExitInfo {
    pub key: LoopKey,
    pub pid: u32,
    pub status: ExitStatus,
    /// How long it lived, when known.
    pub lifetime_ns: Option<u64>,
    /// The OOM killer chose it (its SIGKILL is then a crash).
    pub oom_killed: bool,
    /// It died an orphan: its parent at death was not the process that
    /// started it (a subreaper or init had adopted it), so nobody who is
    /// there restarted it.
    pub orphaned: bool,
}

/// Signals a program gets for its own fault.
const FAULT_SIGNALS: [i32; 7] = [
    libc::SIGSEGV,
    libc::SIGABRT,
    libc::SIGBUS,
    libc::SIGILL,
    libc::SIGFPE,
    libc::SIGSYS,
    libc::SIGTRAP,
];

impl ExitInfo {
    /// Whether this exit is the program failing (see the module's rule),
    /// whatever its lifetime.
    fn failed(&self) -> bool {
        match self.status {
            ExitStatus::Exited(code) => code != 0,
            ExitStatus::Signaled { signal, .. } => {
                FAULT_SIGNALS.contains(&signal) || (signal == libc::SIGKILL && self.oom_killed)
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct CrashLoop {
    pub key: LoopKey,
    /// Crashes within the window.
    pub crashes: u32,
    pub window_ns: u64,
    /// Crashes per minute over the window's crashes (their span, a second
    /// at least: five crashes in 9 ms are not 33,000 a minute).
    pub per_minute: f64,
    /// Recent failures, oldest first.
    pub statuses: Vec<ExitStatus>,
    pub last_pid: u32,
    /// The last crash died an orphan (see `ExitInfo::orphaned`).
    pub orphaned: bool,
    /// Crashes since the loop began (its last success or quiet window).
    pub total: u64,
    /// How long the loop has gone on without a break.
    pub loop_ns: u64,
    /// The share of the loop's time the program was running (0 to 1): a
    /// paced retry waits far longer than it runs.
    pub busy: f64,
    /// Sustained (see the module's rule): only such a loop may be stopped.
    pub sustained: bool,
}

/// One loop's history.
#[derive(Default)]
struct History {
    crashes: VecDeque<(u64, ExitStatus)>,
    last_alert: Option<u64>,
    /// When the unbroken loop began, and its crashes since.
    since: u64,
    total: u64,
    /// Of those, the runs started back to back after the previous one, and
    /// those started after other programs.
    back_to_back: u64,
    between_others: u64,
    /// When the previous run ended.
    last_exit: u64,
    /// How long its runs lived, together.
    alive_ns: u64,
    /// The sustained alert was given.
    sustained_alerted: bool,
}

/// A child a supervisor ran: when it started and ended, and what it was.
#[derive(Clone, Copy)]
struct Run {
    started: u64,
    ended: u64,
    command: u64,
}

/// A sustained loop's program ran at least this share of the loop's time:
/// it started up and died, again and again, rather than answering a probe
/// between long waits (a retry paced by a sleep costs next to nothing).
pub const BUSY: f64 = 0.5;

/// Children remembered per starter: enough to see whether anything else ran
/// between two runs of a command.
const RUNS_KEPT: usize = 8;

#[derive(Default)]
pub struct CrashLoopDetector {
    rules: CrashLoopRules,
    /// Programs and cgroups whose exits never count.
    ignore: Ignore,
    loops: HashMap<LoopKey, History>,
    /// Each starter's recent children, newest last.
    children: HashMap<u32, VecDeque<Run>>,
    hasher: RandomState,
}

impl CrashLoopDetector {
    pub fn rules(&self) -> CrashLoopRules {
        self.rules
    }

    pub fn new(rules: CrashLoopRules, ignore: Ignore) -> Self {
        Self {
            rules,
            ignore,
            ..Self::default()
        }
    }

    /// A process ended at `now`; returns the verdict when it completes a
    /// loop, or makes one sustained.
    pub fn exit(&mut self, now: u64, exit: ExitInfo) -> Option<CrashLoop> {
        // A process whose start is unknown tells nothing: neither a crash
        // nor the end of a loop.
        let lifetime = exit.lifetime_ns?;
        let started = now.saturating_sub(lifetime);
        // Every child is remembered by its starter (this one is left out
        // below: it is the same command).
        let command = self.hasher.hash_one(&exit.key);
        let runs = self.children.entry(exit.key.supervisor).or_default();
        if runs.len() == RUNS_KEPT {
            runs.pop_front();
        }
        runs.push_back(Run {
            started,
            ended: now,
            command,
        });
        if self
            .ignore
            .matches(Some(&exit.key.program), exit.key.cgroup.as_deref())
        {
            return None;
        }
        if !exit.failed() || lifetime > self.rules.max_lifetime_ns {
            // A success, or a long run: whatever looped is over. (Most
            // exits: one lookup, and none while nothing loops.)
            if !self.loops.is_empty() {
                self.loops.remove(&exit.key);
            }
            return None;
        }
        // What ran between this command's previous run and this one.
        let others_between = self.loops.get(&exit.key).is_some_and(|h| {
            self.children.get(&exit.key.supervisor).is_some_and(|runs| {
                runs.iter()
                    .any(|r| r.command != command && r.started >= h.last_exit && r.ended <= started)
            })
        });
        let rules = self.rules;
        let history = self.loops.entry(exit.key.clone()).or_default();
        if history.total == 0 || now.saturating_sub(history.last_exit) > rules.window_ns {
            // A new loop (or one quiet for a whole window: begun again).
            *history = History {
                since: started,
                last_alert: history.last_alert,
                ..History::default()
            };
        } else if others_between {
            history.between_others += 1;
        } else {
            history.back_to_back += 1;
        }
        history.total += 1;
        history.last_exit = now;
        history.alive_ns += lifetime;
        history.crashes.push_back((now, exit.status));
        while history
            .crashes
            .front()
            .is_some_and(|&(t, _)| t + rules.window_ns < now)
        {
            history.crashes.pop_front();
        }
        // A script's step or a paced retry: never a crash loop.
        if history.back_to_back < history.between_others.max(1) {
            return None;
        }
        let count = history.crashes.len() as u32;
        let loop_ns = now.saturating_sub(history.since);
        let busy = (history.alive_ns as f64 / loop_ns.max(1) as f64).min(1.0);
        let sustained = history.total >= u64::from(rules.sustained_count)
            && loop_ns >= rules.sustained_ns
            && busy >= BUSY;
        let quiet = history
            .last_alert
            .is_none_or(|t| now.saturating_sub(t) >= rules.window_ns);
        let escalate = sustained && !history.sustained_alerted;
        if !escalate && (count < rules.count || !quiet) {
            return None;
        }
        history.last_alert = Some(now);
        history.sustained_alerted |= sustained;
        let span = now
            .saturating_sub(history.crashes.front().map_or(now, |c| c.0))
            .max(NS);
        Some(CrashLoop {
            key: exit.key,
            crashes: count,
            window_ns: rules.window_ns,
            per_minute: (count - 1) as f64 * 60.0 * NS as f64 / span as f64,
            statuses: history.crashes.iter().map(|&(_, s)| s).collect(),
            last_pid: exit.pid,
            orphaned: exit.orphaned,
            total: history.total,
            loop_ns,
            busy,
            sustained,
        })
    }

    /// Forgets loops, and starters' children, quiet for a whole window.
    pub fn prune(&mut self, now: u64) {
        let window = self.rules.window_ns;
        self.loops
            .retain(|_, h| h.crashes.back().is_some_and(|&(t, _)| t + window >= now));
        self.children
            .retain(|_, runs| runs.back().is_some_and(|r| r.ended + window >= now));
    }
}

/// The systemd unit a cgroup path names, if any (the last component that
/// ends in .service, .scope, .slice or .socket).
pub fn systemd_unit(cgroup: &str) -> Option<&str> {
    cgroup
        .rsplit('/')
        .find(|c| {
            [".service", ".scope", ".socket"]
                .iter()
                .any(|s| c.ends_with(s))
        })
        .or_else(|| cgroup.rsplit('/').find(|c| c.ends_with(".slice")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn key() -> LoopKey {
        LoopKey {
            program: Arc::from("/usr/bin/app"),
            args: Some(Arc::from(["app".to_owned(), "--serve".to_owned()])),
            cgroup: Some(Arc::from("/sys/fs/cgroup/app.service")),
            supervisor: 7,
        }
    }

    fn exit(pid: u32, status: ExitStatus, lifetime_ms: u64) -> ExitInfo {
        ExitInfo {
            key: key(),
            pid,
            status,
            lifetime_ns: Some(lifetime_ms * MS),
            oom_killed: false,
            orphaned: false,
        }
    }

    /// `program ARG` run by the same starter as `key()`.
    fn run_of(program: &str, arg: &str, status: ExitStatus, lifetime_ms: u64) -> ExitInfo {
        ExitInfo {
            key: LoopKey {
                program: Arc::from(program),
                args: Some(Arc::from([program.to_owned(), arg.to_owned()])),
                ..key()
            },
            ..exit(900, status, lifetime_ms)
        }
    }

    fn detector() -> CrashLoopDetector {
        CrashLoopDetector::new(CrashLoopRules::default(), Ignore::default())
    }

    #[test]
    fn the_nth_quick_failure_raises_one_alert() {
        let mut d = detector();
        let mut alerts = Vec::new();
        for i in 0..12u32 {
            // exits with 3 after 50 ms, restarted every 100 ms
            if let Some(a) = d.exit(
                u64::from(i) * 100 * MS,
                exit(100 + i, ExitStatus::Exited(3), 50),
            ) {
                alerts.push((i, a));
            }
        }
        assert_eq!(alerts.len(), 1, "one alert per window");
        let (at, a) = &alerts[0];
        assert_eq!(*at, 4, "at the 5th crash");
        assert_eq!(a.crashes, 5);
        assert_eq!(a.statuses, vec![ExitStatus::Exited(3); 5]);
        assert_eq!(a.last_pid, 104);
        assert!(!a.sustained, "early: a report");
        // 4 intervals over 400 ms, counted over a second at least.
        assert!((a.per_minute - 240.0).abs() < 1.0, "{}", a.per_minute);
    }

    #[test]
    fn signals_count_clean_exits_and_long_lives_do_not() {
        let mut d = detector();
        for i in 0..20u64 {
            assert!(
                d.exit(i * 100 * MS, exit(1, ExitStatus::Exited(0), 50))
                    .is_none(),
                "exit 0 is no crash"
            );
        }
        for i in 0..20u64 {
            // fails every 2 minutes, after running for 2 minutes
            assert!(
                d.exit(i * 120_000 * MS, exit(2, ExitStatus::Exited(1), 120_000))
                    .is_none()
            );
        }
        let segv = ExitStatus::Signaled {
            signal: 11,
            core_dumped: true,
        };
        let alert = (0..5u64)
            .filter_map(|i| d.exit(10_000_000 * MS + i * 20 * MS, exit(3, segv, 10)))
            .next();
        assert_eq!(alert.map(|a| a.statuses), Some(vec![segv; 5]));
    }

    /// A checking script: `ls` and `stat` of missing files (exit 2), the
    /// same arguments every round, with and without a sleep: each runs
    /// between other programs, so however often they fail, no loop.
    #[test]
    fn a_checking_script_is_no_crash_loop_whatever_its_codes() {
        let mut d = detector();
        let mut t = 0;
        for _ in 0..500 {
            for (program, lifetime) in [("/usr/bin/ls", 3), ("/usr/bin/stat", 2)] {
                t += (lifetime + 1) * MS;
                let step = run_of(program, "/no/such/file", ExitStatus::Exited(2), lifetime);
                assert_eq!(d.exit(t, step), None, "{program} at {t}");
            }
        }
        let mut d = detector();
        for n in 0..500u64 {
            // grep's, test's and diff's answers with a sleep between rounds
            let mut t = n * 1000 * MS;
            for program in ["/usr/bin/grep", "/usr/bin/test", "/usr/bin/diff"] {
                t += 5 * MS;
                let step = run_of(program, "x", ExitStatus::Exited(1), 4);
                assert_eq!(d.exit(t, step), None, "{program}");
            }
            let sleep = run_of("/usr/bin/sleep", "0.9", ExitStatus::Exited(0), 900);
            assert_eq!(d.exit(t + 900 * MS, sleep), None);
        }
    }

    /// `until curl ...; do sleep 1; done` (curl refused: exit 7), for ten
    /// minutes: a retry paced by a sleep, never a loop. And the same wait
    /// that ends (the service came up) leaves nothing behind.
    #[test]
    fn a_retry_loop_with_a_sleep_is_no_crash_loop() {
        let mut d = detector();
        for n in 0..600u64 {
            let t = n * 1010 * MS;
            let probe = run_of("/usr/bin/curl", "http://db:5432", ExitStatus::Exited(7), 8);
            assert_eq!(d.exit(t + 8 * MS, probe), None);
            let sleep = run_of("/usr/bin/sleep", "1", ExitStatus::Exited(0), 1000);
            assert_eq!(d.exit(t + 1010 * MS, sleep), None);
        }
        assert!(d.loops.values().all(|h| h.back_to_back == 0));
        // A busy wait with no sleep that succeeds after 3 s: an early
        // report at most, and once it succeeds the loop is gone.
        let mut d = detector();
        let mut alerts = Vec::new();
        for n in 0..300u64 {
            let probe = run_of("/usr/bin/nc", "-z", ExitStatus::Exited(1), 9);
            alerts.extend(d.exit(n * 10 * MS, probe));
        }
        assert!(alerts.iter().all(|a| !a.sustained), "{alerts:?}");
        let up = run_of("/usr/bin/nc", "-z", ExitStatus::Exited(0), 9);
        assert_eq!(d.exit(3010 * MS, up), None);
        assert!(d.loops.is_empty(), "the loop ended with the success");
    }

    /// Seed 003's shape: `while true; do ./server; done`, the server dying
    /// 40 ms after each start, for three minutes: reported at the 5th
    /// crash, sustained once 20 crashes span 120 s (not before), and the
    /// sustained alert given once.
    #[test]
    fn a_restart_loop_becomes_sustained_after_minutes() {
        let mut d = detector();
        let mut verdicts = Vec::new();
        for n in 0..4000u64 {
            let t = n * 45 * MS + 40 * MS;
            if let Some(v) = d.exit(t, exit(1000 + n as u32, ExitStatus::Exited(1), 40)) {
                verdicts.push((t, v));
            }
        }
        let (early_at, early) = &verdicts[0];
        assert!(!early.sustained && early.crashes == 5, "{early:?}");
        assert_eq!(*early_at, 4 * 45 * MS + 40 * MS);
        let sustained: Vec<_> = verdicts.iter().filter(|(_, v)| v.sustained).collect();
        assert_eq!(sustained.len(), 1, "{verdicts:?}");
        let (at, v) = sustained[0];
        assert!((120 * NS..121 * NS).contains(at), "at {at}");
        assert!(v.loop_ns >= 120 * NS && v.total >= 2600, "{v:?}");
        assert!(v.busy > 0.8, "{v:?}");
        // Early reports once a window, the sustained one among them.
        assert_eq!(
            verdicts.len(),
            3,
            "{:?}",
            verdicts.iter().map(|v| v.0).collect::<Vec<_>>()
        );
    }

    /// A supervisor that waits 1 s before each restart (runsv, systemd's
    /// RestartSec, a program's own retry): a loop, reported; but a program
    /// that ran 20 ms of every second is paced, never sustained.
    #[test]
    fn a_paced_restart_is_reported_but_never_sustained() {
        let mut d = detector();
        let verdicts: Vec<CrashLoop> = (0..600u64)
            .filter_map(|n| {
                d.exit(
                    n * 1020 * MS + 20 * MS,
                    exit(7, ExitStatus::Exited(111), 20),
                )
            })
            .collect();
        assert!(!verdicts.is_empty());
        assert!(
            verdicts.iter().all(|v| !v.sustained && v.busy < 0.05),
            "{verdicts:?}"
        );
        // The same, but the program runs 2 s before dying: busy, sustained.
        let mut d = detector();
        let first = (0..200u64)
            .filter_map(|n| {
                let t = n * 3000 * MS + 2000 * MS;
                d.exit(t, exit(7, ExitStatus::Exited(1), 2000))
                    .map(|v| (t, v))
            })
            .find(|(_, v)| v.sustained);
        // Then every window's report says so again.
        assert_eq!(
            first.map(|(t, _)| t),
            Some(122 * NS),
            "the first run ending past 120 s"
        );
    }

    /// `while :; do ./a; ./b; done`, both failing: each runs between runs
    /// of the other... which is a script's shape, unless most gaps are
    /// clean. A supervisor running two loops whose restarts interleave
    /// only now and then still reports both.
    #[test]
    fn two_loops_under_one_supervisor_that_rarely_interleave() {
        let mut d = detector();
        let mut programs = HashMap::new();
        for n in 0..100u64 {
            let t = n * 100 * MS;
            let a = run_of("/opt/a", "", ExitStatus::Exited(3), 30);
            if let Some(v) = d.exit(t + 30 * MS, a) {
                *programs.entry(v.key.program.to_string()).or_insert(0) += 1;
            }
            if n % 4 == 0 {
                // b dies rarely, between two runs of a
                let b = run_of("/opt/b", "", ExitStatus::Exited(3), 10);
                if let Some(v) = d.exit(t + 60 * MS, b) {
                    *programs.entry(v.key.program.to_string()).or_insert(0) += 1;
                }
            }
        }
        assert!(programs.contains_key("/opt/a"), "{programs:?}");
    }

    /// A loop broken by a success starts over: the sustained count is of
    /// an unbroken loop.
    #[test]
    fn a_success_breaks_the_loop() {
        let mut d = detector();
        let mut sustained = 0;
        for n in 0..5000u64 {
            let t = n * 50 * MS + 40 * MS;
            let status = if n % 1000 == 999 {
                ExitStatus::Exited(0)
            } else {
                ExitStatus::Exited(1)
            };
            sustained += d.exit(t, exit(1, status, 40)).is_some_and(|v| v.sustained) as u32;
        }
        assert_eq!(sustained, 0, "every 50 s the program succeeded once");
    }

    /// An exit whose start is unknown neither counts nor breaks the loop.
    #[test]
    fn an_exit_of_unknown_age_breaks_nothing() {
        let mut d = detector();
        let mut verdicts = 0;
        for n in 0..10u64 {
            let mut run = exit(n as u32, ExitStatus::Exited(3), 40);
            if n == 3 {
                run.lifetime_ns = None;
                run.status = ExitStatus::Exited(0);
            }
            verdicts += u32::from(d.exit(n * 45 * MS + 40 * MS, run).is_some());
        }
        assert_eq!(verdicts, 1);
        assert_eq!(d.loops.values().map(|h| h.total).sum::<u64>(), 9);
    }

    #[test]
    fn only_the_same_command_again_is_a_restart() {
        let mut d = detector();
        // A script running one tool over five inputs, each failing.
        for n in 0..5u64 {
            let run = ExitInfo {
                key: LoopKey {
                    args: Some(Arc::from(["tool".to_owned(), format!("input-{n}")])),
                    ..key()
                },
                ..exit(300 + n as u32, ExitStatus::Exited(3), 5)
            };
            assert_eq!(d.exit(n * 6 * MS, run), None);
        }
        let restarts = (0..5u64)
            .filter_map(|n| d.exit(100 * MS + n * 6 * MS, exit(400, ExitStatus::Exited(3), 5)))
            .count();
        assert_eq!(restarts, 1, "the same command five times");
    }

    #[test]
    fn ignored_programs_never_count() {
        let rules =
            [super::super::switches::parse_ignore("crashloop:program=/app$").expect("rule")];
        let mut d = CrashLoopDetector::new(
            CrashLoopRules::default(),
            Ignore::for_detector(&rules, super::super::switches::Detector::Crashloop),
        );
        let alerts = (0..10u64)
            .filter_map(|n| d.exit(n * 6 * MS, exit(1, ExitStatus::Exited(3), 5)))
            .count();
        assert_eq!(alerts, 0);
        assert_eq!(parse_setting("off"), Ok(CrashLoopSetting(None)));
        assert_eq!(parse_setting("5/60"), Ok(CrashLoopSetting(Some((5, 60)))));
        assert_eq!(parse_sustained("20/120"), Ok(SustainedSetting::DEFAULT));
        assert_eq!(parse_sustained("8/0"), Ok(SustainedSetting(8, 0)));
        assert!(parse_sustained("1/10").is_err() && parse_sustained("x").is_err());
    }

    #[test]
    fn kills_by_others_are_no_crash_and_the_oom_killers_are() {
        let signaled = |signal| ExitStatus::Signaled {
            signal,
            core_dumped: false,
        };
        let mut d = detector();
        // A bomb contained by guard (or another agent), an operator's kill,
        // a supervisor stopping its child: never a loop.
        for signal in [libc::SIGKILL, libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            for i in 0..10u64 {
                assert_eq!(d.exit(i * 11 * MS, exit(4, signaled(signal), 10)), None);
            }
        }
        let alerts = (0..5u64)
            .filter_map(|i| {
                let oom_kill = ExitInfo {
                    oom_killed: true,
                    orphaned: false,
                    ..exit(5, signaled(libc::SIGKILL), 10)
                };
                d.exit(NS + i * 11 * MS, oom_kill)
            })
            .count();
        assert_eq!(alerts, 1, "five OOM kills are a loop");
        let mut d = detector();
        let aborts = (0..5u64)
            .filter_map(|i| d.exit(i * 11 * MS, exit(6, signaled(libc::SIGABRT), 10)))
            .count();
        assert_eq!(aborts, 1);
    }

    #[test]
    fn crashes_outside_the_window_do_not_add_up() {
        let mut d = CrashLoopDetector::new(
            CrashLoopRules {
                count: 3,
                window_ns: 10 * NS,
                ..Default::default()
            },
            Ignore::default(),
        );
        for i in 0..10u64 {
            // one crash every 6 s: never 3 within 10 s
            assert!(
                d.exit(i * 6 * NS, exit(4, ExitStatus::Exited(2), 5))
                    .is_none()
            );
        }
    }

    #[test]
    fn starters_children_are_bounded_and_forgotten() {
        let mut d = detector();
        for n in 0..10_000u64 {
            let run = ExitInfo {
                key: LoopKey {
                    supervisor: (n % 100) as u32,
                    ..key()
                },
                ..exit(n as u32, ExitStatus::Exited(0), 5)
            };
            d.exit(n * MS, run);
        }
        assert_eq!(d.children.len(), 100);
        assert!(d.children.values().all(|r| r.len() <= RUNS_KEPT));
        d.prune(1000 * NS);
        assert!(d.children.is_empty() && d.loops.is_empty());
    }

    #[test]
    fn rules_and_units_parse() {
        assert_eq!(parse_rule("5/60"), Ok((5, 60)));
        assert!(
            parse_rule("5").is_err() && parse_rule("1/60").is_err() && parse_rule("x/60").is_err()
        );
        assert_eq!(
            systemd_unit("/sys/fs/cgroup/system.slice/nginx.service"),
            Some("nginx.service")
        );
        assert_eq!(
            systemd_unit("/sys/fs/cgroup/user.slice/user-0.slice/session-1.scope"),
            Some("session-1.scope")
        );
        assert_eq!(systemd_unit("/sys/fs/cgroup/pids/ci"), None);
    }
}
