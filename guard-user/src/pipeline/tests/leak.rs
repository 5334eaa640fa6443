//! The leak plugin: a steady rise in a cgroup with no plateau, from the
//! task counts the pipeline reads each tick.

use crate::{
    detect::leak::{LeakDetector, LeakRules},
    kernel::decode::ExitStatus,
    pipeline::{
        fixture::{self, *},
        leak::LeakWatch,
    },
    respond::policy::ActionKind,
};

/// What each helper holds (anon + shmem).
const HELPER_BYTES: u64 = 2 << 20;

/// A 20 s window, 10 tasks of growth.
fn rules() -> LeakRules {
    LeakRules {
        window_ns: 20 * SEC,
        growth: 10,
    }
}

fn fixture(settings: crate::pipeline::Settings) -> Fixture {
    let f = Fixture::new(
        settings,
        vec![Box::new(LeakWatch::new(LeakDetector::new(rules())))],
        &[(100, 1, "server")],
        &[],
    );
    f.host.set_memcg(MEMORY_JOBS, 10 << 20, 1 << 30);
    f
}

/// The server forks a helper every second, none exits, each holding
/// `HELPER_BYTES`; guard reads the cgroup's count every second. Returns
/// every request of the checks.
fn leak_for(f: &mut Fixture, secs: u64, limit: Option<u64>) -> Vec<crate::pipeline::ActionRequest> {
    let mut requests = Vec::new();
    f.host
        .processes
        .lock()
        .expect("lock")
        .insert(100, HELPER_BYTES);
    for s in 0..=secs {
        let t = s * SEC;
        let pid = 200 + s as u32;
        f.host
            .processes
            .lock()
            .expect("lock")
            .insert(pid, HELPER_BYTES);
        f.handle(fixture::fork(t, 100, pid, "server"));
        f.host.set_pids(PIDS_JOBS, 2 + s, limit);
        f.pipe.sample_pids(t);
        requests.extend(f.pipe.check(t).expect("check"));
    }
    requests
}

#[test]
fn a_steady_rise_is_named_with_its_projections() {
    let mut f = fixture(fixture::settings());
    leak_for(&mut f, 22, Some(1000));
    let alerts = f.alerts();
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    let a = &alerts[0];
    assert_eq!(
        (a["detector"].as_str(), a["rule"].as_str()),
        (Some("leak"), Some("leak"))
    );
    assert_eq!(a["cgroup"], PIDS_JOBS);
    // Five of the window's six slices (20 s) are covered at the 17th
    // second.
    assert_eq!(a["tasks_now"], 19);
    assert_eq!(a["pids_limit"], 1000);
    // One a second: 979 tasks to the limit.
    let per_min = a["per_min"].as_f64().expect("per_min");
    assert!((50.0..=70.0).contains(&per_min), "{a}");
    let eta = a["pids_eta_secs"].as_f64().expect("pids eta");
    assert!((800.0..=1200.0).contains(&eta), "{a}");
    // Memory: 10 MiB used of a 1 GiB limit, 2 MiB a helper: ~500 tasks
    // away, so the pids limit comes... second.
    assert_eq!(a["memory_pool"], MEMORY_JOBS);
    assert_eq!(a["memory_limit_bytes"], 1u64 << 30);
    assert_eq!(a["memory_per_task_bytes"], HELPER_BYTES);
    let memory_eta = a["memory_eta_secs"].as_f64().expect("memory eta");
    assert!((450.0..=560.0).contains(&memory_eta), "{a}");
    assert_eq!(a["runs_out_first"], "memory");
    // The host's task table: 300 of 4,194,304, far behind.
    assert_eq!(a["host_tasks_limit"], 4_194_304);
    assert!(a["host_tasks_eta_secs"].as_f64() > Some(1e6), "{a}");
    assert_eq!(a["offender"]["pid"], 100, "the server, not a helper: {a}");
    assert_eq!(a["action"], "log");
}

#[test]
fn memory_runs_out_first_when_each_task_holds_enough() {
    let mut f = fixture(fixture::settings());
    // 21 tasks hold 900 MiB of a 1 GiB limit: memory goes first.
    f.host.set_memcg(MEMORY_JOBS, 900 << 20, 1 << 30);
    leak_for(&mut f, 22, None);
    let a = &f.alerts()[0];
    assert_eq!(a["runs_out_first"], "memory", "{a}");
    assert!(
        a["pids_eta_secs"].is_null() && a["pids_limit"].is_null(),
        "{a}"
    );
    assert!(
        a["memory_eta_secs"].as_f64().is_some_and(|s| s < 120.0),
        "{a}"
    );
}

#[test]
fn the_action_follows_the_leak_action_and_takes_the_subtree() {
    let mut settings = fixture::settings();
    settings.leak_action = ActionKind::Kill;
    let mut f = fixture(settings);
    let requests = leak_for(&mut f, 22, None);
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(
        (r.detector, r.kind),
        (crate::detect::switches::Detector::Leak, ActionKind::Kill)
    );
    let mut members: Vec<u32> = r.members.iter().map(|m| m.tgid).collect();
    members.sort_unstable();
    assert_eq!(members.first(), Some(&100), "the server leads its subtree");
    assert!(
        members.len() >= 18,
        "the server and its helpers: {members:?}"
    );
    assert_eq!(f.alerts()[0]["action"], "kill");
}

#[test]
fn a_leak_under_refuse_asks_to_refuse_the_subtree_and_keeps_it_running() {
    let mut settings = fixture::settings();
    settings.leak_action = ActionKind::RefuseThenKill;
    let mut f = fixture(settings);
    let requests = leak_for(&mut f, 22, None);
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].kind, ActionKind::RefuseThenKill);
    assert_eq!(f.alerts()[0]["action"], "refuse-then-kill");
}

#[test]
fn a_plateau_an_ignored_cgroup_and_off_stay_quiet() {
    // A pool that started 30 workers and holds them: no rise.
    let mut f = fixture(fixture::settings());
    for s in 0..=25u64 {
        let t = s * SEC;
        f.host.set_pids(PIDS_JOBS, 31, None);
        if s == 0 {
            for w in 0..30 {
                f.handle(fixture::fork(t, 100, 300 + w, "server"));
            }
        }
        f.pipe.sample_pids(t);
        f.pipe.check(t).expect("check");
    }
    assert!(f.alerts().is_empty());

    let mut settings = fixture::settings();
    settings.ignore_leak = fixture::ignoring(&format!("leak:cgroup=^{PIDS_JOBS}$"));
    let mut f = fixture(settings);
    leak_for(&mut f, 22, None);
    assert!(f.alerts().is_empty(), "ignored");

    let mut settings = fixture::settings();
    settings.off = vec![crate::detect::switches::Detector::Leak];
    let mut f = fixture(settings);
    leak_for(&mut f, 22, None);
    assert!(f.alerts().is_empty(), "switched off");
}

#[test]
fn a_rise_that_exits_undo_is_no_leak() {
    // Helpers come and go: the count rises, then falls back.
    let mut f = fixture(fixture::settings());
    for s in 0..=25u64 {
        let t = s * SEC;
        let pid = 200 + s as u32;
        f.handle(fixture::fork(t, 100, pid, "server"));
        if s >= 3 {
            f.handle(fixture::exit(
                t + 1,
                pid - 3,
                100,
                ExitStatus::Exited(0),
                "server",
            ));
        }
        f.host.set_pids(PIDS_JOBS, 2 + s.min(3), None);
        f.pipe.sample_pids(t);
        f.pipe.check(t).expect("check");
    }
    assert!(f.alerts().is_empty());
}

#[test]
fn a_cgroup_policy_sets_the_leak_action_and_dry_run_only_says_so() {
    let mut settings = fixture::settings();
    settings.policies = fixture::policy(PIDS_JOBS, |p| p.leak_action = Some(ActionKind::Stop));
    let mut f = fixture(settings.clone());
    let requests = leak_for(&mut f, 22, None);
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].kind, ActionKind::Stop);

    settings.dry_run = true;
    let mut f = fixture(settings);
    let requests = leak_for(&mut f, 22, None);
    assert!(requests.is_empty());
    let records = f.records();
    let action = records
        .iter()
        .find(|r| r["kind"] == "action")
        .unwrap_or_else(|| panic!("no dry-run record: {records:#?}"));
    assert_eq!(
        (action["dry_run"].as_bool(), action["action"].as_str()),
        (Some(true), Some("stop"))
    );
}

/// No memory cgroup: the host's 24 GiB, 4 GiB of them held, is the pool.
fn host_pool_fixture() -> Fixture {
    let f = Fixture::new(
        fixture::settings(),
        vec![Box::new(LeakWatch::new(LeakDetector::new(rules())))],
        &[(100, 1, "server")],
        &[],
    );
    *f.host.host_memory.lock().expect("lock") = Some(crate::detect::memory::MemUsage {
        usage: 4 << 30,
        unreclaimable: 4 << 30,
        limit: 24 << 30,
    });
    f
}

#[test]
fn without_a_memory_limit_the_host_is_the_pool_and_one_window_one_alert() {
    let mut f = host_pool_fixture();
    leak_for(&mut f, 35, None);
    let alerts = f.alerts();
    assert_eq!(alerts.len(), 1, "one alert a window: {alerts:#?}");
    assert_eq!(alerts[0]["memory_pool"], "host");
    assert_eq!(alerts[0]["memory_limit_bytes"], 24u64 << 30);
    // 20 GiB free at 2 MiB a task: ~10,000 tasks, before the host's
    // 4 million.
    assert_eq!(alerts[0]["runs_out_first"], "memory");
    // With a smaller task table, that comes first.
    let mut f = host_pool_fixture();
    *f.host.host_tasks.lock().expect("lock") = Some((31_000, 32_768));
    leak_for(&mut f, 35, None);
    let a = &f.alerts()[0];
    assert_eq!(a["runs_out_first"], "host_tasks", "{a}");
    let eta = a["host_tasks_eta_secs"].as_f64().expect("eta");
    assert!((1500.0..=2000.0).contains(&eta), "1768 tasks at 1/s: {a}");
}

#[test]
fn a_protected_server_is_passed_over_for_its_helpers() {
    let mut settings = fixture::settings();
    settings.leak_action = ActionKind::Kill;
    let mut f = Fixture::new(
        settings,
        vec![Box::new(LeakWatch::new(LeakDetector::new(rules())))],
        &[(100, 1, "server")],
        &[100],
    );
    f.host.set_memcg(MEMORY_JOBS, 10 << 20, 1 << 30);
    let requests = leak_for(&mut f, 22, None);
    let a = &f.alerts()[0];
    assert_ne!(a["offender"]["pid"], 100, "{a}");
    assert!(
        requests
            .iter()
            .all(|r| r.members.iter().all(|m| m.tgid != 100)),
        "the protected server is never signalled"
    );
}
