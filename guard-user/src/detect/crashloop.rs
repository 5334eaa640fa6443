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
//! A status is no crash either: `grep`, `test`, `diff`, `false` and their
//! kin exit 1 to answer "no match", "false", "they differ"
//! ([`STATUS_UTILITIES`]); a script that polls or tests with them is
//! working as meant.
//!
//! **Loop.** `N` crashes of the same program with the same arguments (a
//! restart runs the same command again), in the same cgroup, under the same
//! supervisor (the parent that keeps restarting it) within a window:
//! `--crashloop N/SECS`, default 5 crashes in 60 s. One alert per loop and
//! window; the alert names the program, the cgroup and its systemd unit when
//! the path names one, the supervisor, the recent exit codes or signals, the
//! count and the rate.
//!
//! Exits with code 0 never count, however often they come.

use std::{
    collections::{HashMap, VecDeque},
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
}

/// `--crashloop`, by default: 5 crashes within 60 s.
pub const DEFAULT_COUNT: u32 = 5;
pub const DEFAULT_WINDOW_SECS: u64 = 60;
/// `--crashloop-lifetime`, by default.
pub const DEFAULT_LIFETIME_SECS: u64 = 30;

impl Default for CrashLoopRules {
    fn default() -> Self {
        Self {
            count: DEFAULT_COUNT,
            window_ns: DEFAULT_WINDOW_SECS * NS,
            max_lifetime_ns: DEFAULT_LIFETIME_SECS * NS,
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

/// Parses `N/SECS` (e.g. `5/60`) or `off`.
pub fn parse_setting(text: &str) -> Result<CrashLoopSetting, String> {
    if text.trim() == "off" {
        return Ok(CrashLoopSetting(None));
    }
    parse_rule(text).map(|rule| CrashLoopSetting(Some(rule)))
}

/// Parses `N/SECS` (e.g. `5/60`).
pub fn parse_rule(text: &str) -> Result<(u32, u64), String> {
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

/// Programs whose exit status 1 is an answer, not a failure.
pub const STATUS_UTILITIES: [&str; 17] = [
    "grep",
    "egrep",
    "fgrep",
    "zgrep",
    "rg",
    "test",
    "[",
    "diff",
    "cmp",
    "false",
    "expr",
    "pgrep",
    "pidof",
    "which",
    "id",
    "mountpoint",
    "getent",
];

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
            ExitStatus::Exited(1) => {
                let name = self.key.program.rsplit('/').next().unwrap_or_default();
                !STATUS_UTILITIES.contains(&name)
            }
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
    pub crashes: u32,
    pub window_ns: u64,
    pub per_minute: f64,
    /// Recent failures, oldest first.
    pub statuses: Vec<ExitStatus>,
    pub last_pid: u32,
    /// The last crash died an orphan (see `ExitInfo::orphaned`).
    pub orphaned: bool,
}

#[derive(Default)]
struct History {
    crashes: VecDeque<(u64, ExitStatus)>,
    last_alert: Option<u64>,
}

#[derive(Default)]
pub struct CrashLoopDetector {
    rules: CrashLoopRules,
    /// Programs and cgroups whose exits never count.
    ignore: Ignore,
    loops: HashMap<LoopKey, History>,
}

impl CrashLoopDetector {
    pub fn new(rules: CrashLoopRules, ignore: Ignore) -> Self {
        Self {
            rules,
            ignore,
            loops: HashMap::new(),
        }
    }

    /// A process ended at `now`; returns the verdict when it completes a loop.
    pub fn exit(&mut self, now: u64, exit: ExitInfo) -> Option<CrashLoop> {
        if self
            .ignore
            .matches(Some(&exit.key.program), exit.key.cgroup.as_deref())
        {
            return None;
        }
        let crashed = exit.failed()
            && exit
                .lifetime_ns
                .is_some_and(|l| l <= self.rules.max_lifetime_ns);
        if !crashed {
            return None;
        }
        let rules = self.rules;
        let history = self.loops.entry(exit.key.clone()).or_default();
        history.crashes.push_back((now, exit.status));
        while history
            .crashes
            .front()
            .is_some_and(|&(t, _)| t + rules.window_ns < now)
        {
            history.crashes.pop_front();
        }
        let count = history.crashes.len() as u32;
        let quiet = history
            .last_alert
            .is_none_or(|t| now.saturating_sub(t) >= rules.window_ns);
        if count < rules.count || !quiet {
            return None;
        }
        history.last_alert = Some(now);
        let span = now
            .saturating_sub(history.crashes.front().map_or(now, |c| c.0))
            .max(1);
        Some(CrashLoop {
            key: exit.key,
            crashes: count,
            window_ns: rules.window_ns,
            per_minute: (count - 1) as f64 * 60.0 * NS as f64 / span as f64,
            statuses: history.crashes.iter().map(|&(_, s)| s).collect(),
            last_pid: exit.pid,
            orphaned: exit.orphaned,
        })
    }

    /// Forgets loops quiet for a whole window.
    pub fn prune(&mut self, now: u64) {
        let window = self.rules.window_ns;
        self.loops
            .retain(|_, h| h.crashes.back().is_some_and(|&(t, _)| t + window >= now));
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

    #[test]
    fn the_nth_quick_failure_raises_one_alert() {
        let mut d = CrashLoopDetector::new(CrashLoopRules::default(), Ignore::default());
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
        assert!((a.per_minute - 600.0).abs() < 1.0, "{}", a.per_minute);
    }

    #[test]
    fn signals_count_clean_exits_and_long_lives_do_not() {
        let mut d = CrashLoopDetector::new(CrashLoopRules::default(), Ignore::default());
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
            .filter_map(|i| d.exit(i * MS, exit(3, segv, 10)))
            .next();
        assert_eq!(alert.map(|a| a.statuses), Some(vec![segv; 5]));
    }

    #[test]
    fn a_script_polling_with_utilities_is_no_crash_loop() {
        let mut d = CrashLoopDetector::new(CrashLoopRules::default(), Ignore::default());
        for (i, program) in [
            "/usr/bin/grep",
            "/bin/grep",
            "/usr/bin/test",
            "/usr/bin/[",
            "/usr/bin/diff",
            "/bin/false",
        ]
        .into_iter()
        .enumerate()
        {
            for n in 0..10u64 {
                let answer = ExitInfo {
                    key: LoopKey {
                        program: Arc::from(program),
                        args: None,
                        ..key()
                    },
                    ..exit(100 + i as u32, ExitStatus::Exited(1), 5)
                };
                assert_eq!(d.exit(n * MS, answer), None, "{program} exit 1");
            }
        }
        // grep's 2 is an error, not an answer.
        let errors = (0..5u64)
            .filter_map(|n| {
                let error = ExitInfo {
                    key: LoopKey {
                        program: Arc::from("/usr/bin/grep"),
                        ..key()
                    },
                    ..exit(200, ExitStatus::Exited(2), 5)
                };
                d.exit(n * MS, error)
            })
            .count();
        assert_eq!(errors, 1);
    }

    #[test]
    fn only_the_same_command_again_is_a_restart() {
        let mut d = CrashLoopDetector::new(CrashLoopRules::default(), Ignore::default());
        // A script running one tool over five inputs, each failing.
        for n in 0..5u64 {
            let run = ExitInfo {
                key: LoopKey {
                    args: Some(Arc::from(["tool".to_owned(), format!("input-{n}")])),
                    ..key()
                },
                ..exit(300 + n as u32, ExitStatus::Exited(3), 5)
            };
            assert_eq!(d.exit(n * MS, run), None);
        }
        let restarts = (0..5u64)
            .filter_map(|n| d.exit(10 * MS + n * MS, exit(400, ExitStatus::Exited(3), 5)))
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
            .filter_map(|n| d.exit(n * MS, exit(1, ExitStatus::Exited(3), 5)))
            .count();
        assert_eq!(alerts, 0);
        assert_eq!(parse_setting("off"), Ok(CrashLoopSetting(None)));
        assert_eq!(parse_setting("5/60"), Ok(CrashLoopSetting(Some((5, 60)))));
    }

    #[test]
    fn kills_by_others_are_no_crash_and_the_oom_killers_are() {
        let signaled = |signal| ExitStatus::Signaled {
            signal,
            core_dumped: false,
        };
        let mut d = CrashLoopDetector::new(CrashLoopRules::default(), Ignore::default());
        // A bomb contained by guard (or another agent), an operator's kill,
        // a supervisor stopping its child: never a loop.
        for signal in [libc::SIGKILL, libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            for i in 0..10u64 {
                assert_eq!(d.exit(i * MS, exit(4, signaled(signal), 10)), None);
            }
        }
        let alerts = (0..5u64)
            .filter_map(|i| {
                let oom_kill = ExitInfo {
                    oom_killed: true,
                    orphaned: false,
                    ..exit(5, signaled(libc::SIGKILL), 10)
                };
                d.exit(i * MS, oom_kill)
            })
            .count();
        assert_eq!(alerts, 1, "five OOM kills are a loop");
        let mut d = CrashLoopDetector::new(CrashLoopRules::default(), Ignore::default());
        let aborts = (0..5u64)
            .filter_map(|i| d.exit(i * MS, exit(6, signaled(libc::SIGABRT), 10)))
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
