//! The crash-loop plugin: exits of a program that a supervisor restarts,
//! keyed by command and by who started it; the supervisor stopped only
//! when it may be.

use crate::{
    detect::{
        crashloop::{CrashLoopDetector, CrashLoopRules},
        switches::{Detector, Ignore},
    },
    kernel::decode::{Event, ExitStatus, OomKill},
    pipeline::{
        crashloop::CrashLoopWatch,
        fixture::{self, *},
    },
    respond::policy::ActionKind,
};

/// The default rules, but a loop is sustained at its 5th crash (the
/// default's two minutes are `a_loop_is_stopped_only_once_sustained`'s).
fn fixture(settings: crate::pipeline::Settings, protected: &[u32]) -> Fixture {
    fixture_with(
        settings,
        protected,
        CrashLoopRules {
            sustained_count: 5,
            sustained_ns: 0,
            ..CrashLoopRules::default()
        },
    )
}

fn fixture_with(
    settings: crate::pipeline::Settings,
    protected: &[u32],
    rules: CrashLoopRules,
) -> Fixture {
    Fixture::new(
        settings,
        vec![Box::new(CrashLoopWatch::new(CrashLoopDetector::new(
            rules,
            Ignore::default(),
        )))],
        &[(100, 1, "supervisor")],
        protected,
    )
}

/// The supervisor starts `program`, which fails with `status` after 90 ms,
/// `times` times, 100 ms apart; the exit's parent is `ppid_at_exit`
/// (`None`: the supervisor). Returns every request the checks made.
fn restarts(
    f: &mut Fixture,
    times: u32,
    status: ExitStatus,
    ppid_at_exit: Option<u32>,
    oom: bool,
) -> Vec<crate::pipeline::ActionRequest> {
    let mut requests = Vec::new();
    for i in 0..times {
        let t = SEC + u64::from(i) * 100 * MS;
        let pid = 500 + i;
        f.handle(fixture::fork(t, 100, pid, "supervisor"));
        f.handle(fixture::exec(t + MS, pid, "/usr/sbin/server"));
        if oom {
            f.handle(Event::OomKill(OomKill {
                boot_ns: t + 89 * MS,
                pid,
                comm: None,
                uid: Some(0),
                trigger_pid: pid,
                trigger_tgid: pid,
                total_vm_kb: None,
                anon_rss_kb: None,
                file_rss_kb: None,
                shmem_rss_kb: None,
                pgtables_kb: None,
                oom_score_adj: None,
            }));
        }
        f.handle(fixture::exit(
            t + 90 * MS,
            pid,
            ppid_at_exit.unwrap_or(100),
            status,
            "server",
        ));
        requests.extend(f.pipe.check(t + 90 * MS).expect("check"));
    }
    requests
}

/// The supervisor starts `program` `times` times, `gap_ns` apart, the
/// first as pid `first_pid`; each exits with `status` after `life_ns`.
fn runs(
    f: &mut Fixture,
    program: &str,
    (times, first_pid): (u32, u32),
    (gap_ns, life_ns): (u64, u64),
    status: ExitStatus,
) {
    let name = program.rsplit('/').next().unwrap_or(program);
    for i in 0..times {
        let t = SEC + u64::from(i) * gap_ns;
        let pid = first_pid + i;
        f.handle(fixture::fork(t, 100, pid, "supervisor"));
        f.handle(fixture::exec(t + MS, pid, program));
        f.handle(fixture::exit(t + life_ns, pid, 100, status, name));
        f.pipe.check(t + life_ns).expect("check");
    }
}

#[test]
fn a_restarted_crashing_program_is_one_loop_under_its_supervisor() {
    let mut f = fixture(fixture::settings(), &[]);
    let requests = restarts(&mut f, 5, ExitStatus::Exited(3), None, false);
    assert!(requests.is_empty(), "log: nothing to do");
    let alerts = f.alerts();
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    let a = &alerts[0];
    assert_eq!(a["rule"], "crash_loop");
    assert_eq!(a["program"], "/usr/sbin/server");
    assert_eq!(a["cgroup"], PIDS_JOBS);
    assert_eq!(a["supervisor"]["pid"], 100);
    assert_eq!(a["supervisor"]["comm"], "supervisor");
    assert_eq!(a["crashes"], 5);
    assert_eq!(a["statuses"][0], "exit 3");
    assert_eq!(a["last_pid"], 504);
    assert_eq!(a["action"], "log");
}

#[test]
fn stop_takes_the_supervisor_alone() {
    let mut settings = fixture::settings();
    settings.crashloop_action = ActionKind::Stop;
    let mut f = fixture(settings, &[]);
    let requests = restarts(&mut f, 5, ExitStatus::Exited(3), None, false);
    assert_eq!(requests.len(), 1, "{requests:?}");
    let r = &requests[0];
    assert_eq!(
        (r.detector, r.kind),
        (Detector::Crashloop, ActionKind::Stop)
    );
    let members: Vec<u32> = r.members.iter().map(|m| m.tgid).collect();
    assert_eq!(members, [100]);
    let a = &f.alerts()[0];
    assert_eq!(
        (a["action"].as_str(), a["not_stopped_because"].is_null()),
        (Some("stop"), true)
    );
}

#[test]
fn a_protected_supervisor_or_an_adopter_of_orphans_is_not_stopped() {
    let mut settings = fixture::settings();
    settings.crashloop_action = ActionKind::Stop;
    let mut f = fixture(settings.clone(), &[100]);
    let requests = restarts(&mut f, 5, ExitStatus::Exited(3), None, false);
    assert!(requests.is_empty());
    let a = &f.alerts()[0];
    assert_eq!(a["action"], "log");
    assert_eq!(a["not_stopped_because"], "named by --protect");

    // Started by 100, dead as PID 1's orphans: 1 is no supervisor, and
    // 100 did not restart them after they died.
    let mut f = fixture(settings, &[]);
    let requests = restarts(&mut f, 5, ExitStatus::Exited(3), Some(1), false);
    assert!(requests.is_empty());
    let a = &f.alerts()[0];
    assert!(
        a["not_stopped_because"]
            .as_str()
            .is_some_and(|w| w.contains("orphan")),
        "{a}"
    );
}

#[test]
fn a_kill_is_a_crash_only_when_the_oom_killer_chose_it() {
    let killed = ExitStatus::Signaled {
        signal: libc::SIGKILL,
        core_dumped: false,
    };
    let mut f = fixture(fixture::settings(), &[]);
    restarts(&mut f, 6, killed, None, false);
    assert!(f.alerts().is_empty(), "killed by someone: not a crash");
    let mut f = fixture(fixture::settings(), &[]);
    restarts(&mut f, 5, killed, None, true);
    let a = &f.alerts()[0];
    assert_eq!(a["statuses"][0], "SIGKILL", "{a}");
}

#[test]
fn success_and_switched_off_stay_quiet() {
    let mut f = fixture(fixture::settings(), &[]);
    restarts(&mut f, 8, ExitStatus::Exited(0), None, false);
    assert!(f.alerts().is_empty());
    let mut settings = fixture::settings();
    settings.off = vec![Detector::Crashloop];
    let mut f = fixture(settings, &[]);
    restarts(&mut f, 8, ExitStatus::Exited(3), None, false);
    assert!(f.alerts().is_empty());
}

#[test]
fn different_commands_are_different_loops() {
    // Six crashes, but of two programs: no loop of five.
    let mut f = fixture(fixture::settings(), &[]);
    runs(
        &mut f,
        "/usr/bin/a",
        (3, 500),
        (100 * MS, 20 * MS),
        ExitStatus::Exited(2),
    );
    runs(
        &mut f,
        "/usr/bin/b",
        (3, 600),
        (100 * MS, 20 * MS),
        ExitStatus::Exited(2),
    );
    assert!(f.alerts().is_empty());
}

#[test]
fn a_program_that_ran_long_before_failing_did_not_crash() {
    // Each ran 40 s (past --crashloop-lifetime's 30 s), then failed.
    let mut f = fixture(fixture::settings(), &[]);
    runs(
        &mut f,
        "/usr/sbin/server",
        (6, 500),
        (41 * SEC, 40 * SEC),
        ExitStatus::Exited(1),
    );
    assert!(f.alerts().is_empty());
}

#[test]
fn an_ignored_program_never_counts() {
    let ignore = fixture::ignoring("crashloop:program=^/usr/sbin/server$");
    let mut f = Fixture::new(
        fixture::settings(),
        vec![Box::new(CrashLoopWatch::new(CrashLoopDetector::new(
            CrashLoopRules::default(),
            ignore,
        )))],
        &[(100, 1, "supervisor")],
        &[],
    );
    restarts(&mut f, 8, ExitStatus::Exited(3), None, false);
    assert!(f.alerts().is_empty());
}

#[test]
fn a_cgroup_policy_can_stop_where_the_flag_only_logs() {
    let mut settings = fixture::settings();
    settings.policies = fixture::policy(PIDS_JOBS, |p| p.crashloop_action = Some(ActionKind::Stop));
    let mut f = fixture(settings, &[]);
    let requests = restarts(&mut f, 5, ExitStatus::Exited(3), None, false);
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].kind, ActionKind::Stop);
    assert_eq!(f.alerts()[0]["action"], "stop");
}

#[test]
fn deaths_in_a_subtree_guard_acts_on_are_not_crashes() {
    // A bomb of crashing copies: guard watches its subtree (tagged), so
    // the members' deaths (guard's own doing, or about to be) are no loop.
    let settings = fixture::killing();
    let mut f = fixture(settings, &[]);
    let (_, members) = fixture::bomb(&mut f, 6);
    assert!(
        !f.system.tags.lock().expect("lock").is_empty(),
        "the subtree is watched"
    );
    for (i, &pid) in members.iter().skip(1).take(8).enumerate() {
        let t = SEC + 40 * MS + i as u64 * MS;
        f.handle(fixture::exit(
            t,
            pid,
            100,
            ExitStatus::Exited(3),
            "supervisor",
        ));
        f.pipe.check(t).expect("check");
    }
    assert!(f.alerts().iter().all(|a| a["detector"] != "crashloop"));
}

#[test]
fn a_retry_between_sleeps_is_no_loop_a_fault_is_a_crash() {
    // `until grep -q ready /run/x; do sleep 0.1; done`, under stop: grep
    // (exit 1, "no") runs between sleeps, so it is retried, not restarted.
    let mut settings = fixture::settings();
    settings.crashloop_action = ActionKind::Stop;
    let mut f = fixture(settings, &[]);
    let mut requests = Vec::new();
    for i in 0..30u32 {
        let t = SEC + u64::from(i) * 120 * MS;
        let (grep, sleep) = (500 + 2 * i, 501 + 2 * i);
        f.handle(fixture::fork(t, 100, grep, "supervisor"));
        f.handle(fixture::exec(t + MS, grep, "/usr/bin/grep"));
        f.handle(fixture::exit(
            t + 5 * MS,
            grep,
            100,
            ExitStatus::Exited(1),
            "grep",
        ));
        f.handle(fixture::fork(t + 6 * MS, 100, sleep, "supervisor"));
        f.handle(fixture::exec(t + 7 * MS, sleep, "/usr/bin/sleep"));
        f.handle(fixture::exit(
            t + 110 * MS,
            sleep,
            100,
            ExitStatus::Exited(0),
            "sleep",
        ));
        requests.extend(f.pipe.check(t + 110 * MS).expect("check"));
    }
    assert!(f.alerts().is_empty(), "{:?}", f.alerts());
    assert!(requests.is_empty());

    let mut f = fixture(fixture::settings(), &[]);
    let segv = ExitStatus::Signaled {
        signal: libc::SIGSEGV,
        core_dumped: true,
    };
    restarts(&mut f, 5, segv, None, false);
    let a = &f.alerts()[0];
    assert_eq!(a["statuses"][4], "SIGSEGV", "{a}");
}

/// With the default rules, `--crashloop-action stop` waits for the loop to
/// be sustained: the early report says why it did not stop, and the stop
/// comes with the first crash past two minutes and 20 crashes.
#[test]
fn a_loop_is_stopped_only_once_sustained() {
    let mut settings = fixture::settings();
    settings.crashloop_action = ActionKind::Stop;
    let mut f = fixture_with(settings, &[], CrashLoopRules::default());
    let mut stop_at = None;
    for i in 0..1500u32 {
        // dies 90 ms after each start, restarted at once
        let t = SEC + u64::from(i) * 100 * MS;
        let pid = 500 + i;
        f.handle(fixture::fork(t, 100, pid, "supervisor"));
        f.handle(fixture::exec(t + MS, pid, "/usr/sbin/server"));
        f.handle(fixture::exit(
            t + 90 * MS,
            pid,
            100,
            ExitStatus::Exited(3),
            "server",
        ));
        let requests = f.pipe.check(t + 90 * MS).expect("check");
        if !requests.is_empty() && stop_at.is_none() {
            assert_eq!(requests[0].kind, ActionKind::Stop);
            stop_at = Some(t + 90 * MS - SEC);
        }
    }
    let alerts = f.alerts();
    let early = &alerts[0];
    assert_eq!(
        (early["action"].as_str(), early["sustained"].as_bool()),
        (Some("log"), Some(false)),
        "{early}"
    );
    assert!(
        early["not_stopped_because"]
            .as_str()
            .is_some_and(|w| w.contains("not sustained")),
        "{early}"
    );
    let stop_at = stop_at.expect("stopped once sustained");
    assert!((120 * SEC..121 * SEC).contains(&stop_at), "{stop_at}");
    let sustained = alerts
        .iter()
        .find(|a| a["sustained"] == true)
        .expect("the sustained alert");
    assert_eq!(sustained["action"], "stop", "{sustained}");
    assert!(
        sustained["loop_crashes"].as_u64() >= Some(1200),
        "{sustained}"
    );
    assert!(sustained["busy"].as_f64() >= Some(0.85), "{sustained}");
}
