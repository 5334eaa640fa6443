//! The crash-loop detector as a plugin: exits of processes in scope fed to
//! the rule (`detect::crashloop`), keyed by the command and by who started
//! it; its alert, and the supervisor a loop may stop.

use super::{
    plugin::{Plugin, Verdict, View},
    *,
};
use crate::{
    detect::crashloop::CrashLoopDetector,
    host::proctable::ProcInfo,
    output::record::{CrashLoopAlert, Supervisor},
};

/// OOM victims remembered until their exit, at most.
const OOM_VICTIMS_KEPT: usize = 4096;

/// What the table knew of a process its exit removes.
struct Dying {
    tgid: u32,
    exe: Option<Arc<str>>,
    args: Option<Arc<[String]>>,
    /// Its fork-time parent.
    forker: Option<u32>,
}

pub struct CrashLoopWatch {
    rule: CrashLoopDetector,
    /// Processes the OOM killer chose, until their exit: their SIGKILL is a
    /// crash (anyone else's is not).
    oom_victims: HashSet<u32>,
    dying: Option<Dying>,
}

impl CrashLoopWatch {
    pub fn new(rule: CrashLoopDetector) -> Self {
        Self {
            rule,
            oom_victims: HashSet::new(),
            dying: None,
        }
    }

    fn verdict(&self, view: &View<'_>, l: &CrashLoop) -> Verdict {
        let statuses: Vec<String> = l
            .statuses
            .iter()
            .map(|s| match s {
                ExitStatus::Exited(code) => format!("exit {code}"),
                ExitStatus::Signaled { signal, .. } => {
                    crate::output::signal_name(*signal).to_owned()
                }
            })
            .collect();
        let supervisor = view.table.get(l.key.supervisor);
        let (action, spared) = match view
            .settings
            .action(Detector::Crashloop, l.key.cgroup.as_deref())
        {
            ActionKind::Log => (ActionKind::Log, None),
            kind => match supervisor_spared(view, l) {
                None if !l.sustained => (ActionKind::Log, Some(NOT_SUSTAINED)),
                Some(why) => (ActionKind::Log, Some(why)),
                None => (kind, None),
            },
        };
        let alert = Alert::CrashLoop(CrashLoopAlert {
            detector: Detector::Crashloop,
            rule: Rule::CrashLoop,
            program: l.key.program.to_string(),
            cgroup: l.key.cgroup.as_deref().map(str::to_owned),
            unit: l
                .key
                .cgroup
                .as_deref()
                .and_then(systemd_unit)
                .map(str::to_owned),
            supervisor: Supervisor {
                comm: supervisor.map(|p| p.comm.to_string()),
                pid: l.key.supervisor,
            },
            crashes: u64::from(l.crashes),
            window_secs: l.window_ns / 1_000_000_000,
            per_minute: (l.per_minute * 10.0).round() / 10.0,
            loop_crashes: l.total,
            loop_secs: (l.loop_ns as f64 / 1e8).round() / 10.0,
            busy: (l.busy * 100.0).round() / 100.0,
            sustained: l.sustained,
            statuses,
            last_pid: l.last_pid,
            action,
            not_stopped_because: spared.map(str::to_owned),
        });
        let request = supervisor
            .filter(|_| action != ActionKind::Log)
            .map(|p| ActionRequest {
                detector: Detector::Crashloop,
                rule: Rule::CrashLoop,
                tag: p.node,
                root: Some(p.node),
                kind: action,
                offender: view.describe(p.node, 1),
                members: vec![Member {
                    tgid: l.key.supervisor,
                    born_ns: view.table.lineage().get(p.node).map_or(0, |n| n.born_ns),
                }],
                pool: None,
                follow_ups: 0,
                incident: None,
            });
        Verdict {
            alert,
            subject: crate::output::incident::Subject::Loop {
                supervisor: l.key.supervisor,
                program: l.key.program.to_string(),
            },
            action: request,
        }
    }
}

/// Why an early report is not acted on.
const NOT_SUSTAINED: &str = "not sustained yet: only a loop that has gone on for \
     --crashloop-stop-after (crashes and seconds), with the program running at least half \
     that time, is stopped";

/// Why the supervisor of a crash loop must not be stopped; `None` when it
/// may be (see `--crashloop-action`): only the live process that started
/// the crashing program again and again, never one that only adopted
/// orphans (a subreaper, init).
fn supervisor_spared(view: &View<'_>, l: &CrashLoop) -> Option<&'static str> {
    if l.orphaned {
        return Some(
            "the program died an orphan: its parent then only adopted it (inheriting \
             orphans is not restarting)",
        );
    }
    let Some(p) = view.table.get(l.key.supervisor) else {
        return Some("the supervisor is unknown");
    };
    let Some(node) = view.table.lineage().get(p.node) else {
        return Some("the supervisor is unknown");
    };
    // Service managers and session daemons are protected by name (see
    // `protect::SUPERVISORS`): stopping one would stop all it runs.
    view.protection.why(node)
}

impl Plugin for CrashLoopWatch {
    fn repeats_within(&self) -> u64 {
        self.rule.rules().window_ns
    }

    fn detector(&self) -> Detector {
        Detector::Crashloop
    }

    fn before(&mut self, view: &View<'_>, event: &Event) {
        // The command of a process about to be removed, and the process
        // that started it (its fork-time parent).
        self.dying = match event {
            Event::Exit(e) if e.group_dead => {
                let lineage = view.table.lineage();
                let node = view.table.get(e.tgid).and_then(|p| lineage.get(p.node));
                Some(Dying {
                    tgid: e.tgid,
                    exe: node.and_then(|n| n.exe.clone()),
                    args: node.and_then(|n| n.cmdline.clone()),
                    forker: node
                        .and_then(|n| n.parent)
                        .and_then(|id| lineage.get(id))
                        .map(|n| n.tgid),
                })
            }
            _ => None,
        };
    }

    fn event(
        &mut self,
        view: &View<'_>,
        event: &Event,
        subject: Option<&ProcInfo>,
    ) -> Vec<Verdict> {
        let dying = self.dying.take().filter(|d| match event {
            Event::Exit(e) => d.tgid == e.tgid,
            _ => false,
        });
        let mut verdicts = Vec::new();
        if let (Event::Exit(e), Some(p)) = (event, subject)
            && e.group_dead
            && view.settings.runs(Detector::Crashloop)
            && !p.kernel_thread
            && view.scope.contains_cgroups(&p.cgroups)
            // A member of a subtree guard watches or acts on dies of
            // guard's own signal (or is about to): not a crash.
            && !view.tagged.contains_key(&p.node)
        {
            let (exe, args, forker) =
                dying.map_or((None, None, None), |d| (d.exe, d.args, d.forker));
            let exit = ExitInfo {
                key: LoopKey {
                    program: exe.unwrap_or_else(|| Arc::from(e.comm.to_string().as_str())),
                    args,
                    cgroup: p.cgroup(view.primary).cloned(),
                    // Keyed by who started it: orphans a subreaper adopted
                    // were started by others, and are no loop of its own.
                    supervisor: forker.unwrap_or(e.ppid),
                },
                pid: e.tgid,
                status: e.status,
                lifetime_ns: (p.start_boot_ns > 0)
                    .then(|| e.boot_ns.saturating_sub(p.start_boot_ns)),
                oom_killed: self.oom_victims.remove(&e.tgid),
                orphaned: forker.is_some_and(|f| f != e.ppid),
            };
            if let Some(crash_loop) = self.rule.exit(e.boot_ns, exit) {
                verdicts.push(self.verdict(view, &crash_loop));
            }
        }
        match event {
            Event::OomKill(k) => {
                if self.oom_victims.len() >= OOM_VICTIMS_KEPT {
                    // Exits lost: forget the oldest guesses wholesale.
                    self.oom_victims.clear();
                }
                self.oom_victims.insert(k.pid);
            }
            // Out of scope, or a kernel thread: no crash to judge.
            Event::Exit(e) if e.group_dead => {
                self.oom_victims.remove(&e.tgid);
            }
            _ => {}
        }
        verdicts
    }

    fn check(&mut self, _view: &View<'_>, now: u64) -> Vec<Verdict> {
        self.rule.prune(now);
        Vec::new()
    }
}
