//! The memory detector's glue: pools found from processes' cgroups, read
//! through the host; the subtree whose growth explains the pool's; the
//! action's outcome with the memory it freed.

use crate::{
    detect::switches::Detector,
    host::observe::MemoryPressure,
    pipeline::fixture::{self, *},
    respond::policy::ActionKind,
};

const MIB: u64 = 1 << 20;

fn fixture(settings: crate::pipeline::Settings) -> Fixture {
    let mut f = Fixture::new(settings, Vec::new(), &[(100, 1, "server")], &[]);
    f.host.set_memcg(MEMORY_JOBS, 500 * MIB, 1024 * MIB);
    // The server starts a worker (this is how the pool is found).
    f.handle(fixture::fork(SEC, 100, 101, "server"));
    f.handle(fixture::exec(SEC + MS, 101, "/usr/bin/worker"));
    f
}

/// The worker grows 20 MiB every 250 ms, and the pool with it; guard
/// reads the pool each time. Returns the requests and the time of the last
/// reading.
fn grow(f: &mut Fixture, steps: u64) -> (Vec<crate::pipeline::ActionRequest>, u64) {
    let mut requests = Vec::new();
    let mut t = SEC;
    for i in 0..=steps {
        t = SEC + i * 250 * MS;
        f.host
            .set_memcg(MEMORY_JOBS, (500 + 20 * i) * MIB, 1024 * MIB);
        f.host
            .processes
            .lock()
            .expect("lock")
            .extend([(100, 10 * MIB), (101, (40 + 20 * i) * MIB)]);
        f.pipe.sample_memory(t);
        requests.extend(f.pipe.check(t).expect("check"));
    }
    (requests, t)
}

#[test]
fn a_pool_on_course_to_its_limit_names_the_process_that_grew() {
    let mut settings = fixture::settings();
    settings.mem_action = ActionKind::Kill;
    let mut f = fixture(settings);
    let (requests, _) = grow(&mut f, 16);
    let alerts = f.alerts();
    let a = alerts.first().unwrap_or_else(|| panic!("no alert"));
    assert_eq!(a["detector"], "memory");
    assert!(
        a["rule"] == "memory_limit_trend" || a["rule"] == "memory_headroom",
        "{a}"
    );
    assert_eq!(a["cgroup"], MEMORY_JOBS);
    assert_eq!(a["limit_bytes"], 1024 * MIB);
    assert!(
        a["mib_per_sec"]
            .as_f64()
            .is_some_and(|r| (60.0..=100.0).contains(&r)),
        "{a}"
    );
    assert_eq!(
        a["offender"]["pid"], 101,
        "the worker grew, not the server: {a}"
    );
    assert!(
        a["offender"]["growth_bytes"]
            .as_u64()
            .is_some_and(|g| g >= 40 * MIB),
        "{a}"
    );
    assert_eq!(a["action"], "kill");
    let r = requests.first().expect("a kill was requested");
    assert_eq!((r.detector, r.kind), (Detector::Memory, ActionKind::Kill));
    assert_eq!(r.members.iter().map(|m| m.tgid).collect::<Vec<_>>(), [101]);
    assert_eq!(r.pool.as_ref().map(|(p, _)| &**p), Some(MEMORY_JOBS));
}

#[test]
fn the_action_record_says_what_it_freed() {
    let mut settings = fixture::settings();
    settings.mem_action = ActionKind::Kill;
    let mut f = fixture(settings);
    let (requests, _) = grow(&mut f, 16);
    let r = requests.first().expect("a request").clone();
    f.records();
    // The worker is gone: the pool is back to 520 MiB.
    f.host.set_memcg(MEMORY_JOBS, 520 * MIB, 1024 * MIB);
    let outcome = fixture::outcome(1);
    let follow_ups = f.pipe.action_done(&r, &outcome, 0).expect("reported");
    assert!(follow_ups.is_empty(), "one process: nothing to follow up");
    let records = f.records();
    let action = records
        .iter()
        .find(|r| r["kind"] == "action")
        .expect("an action record");
    assert_eq!(action["signals"], "SIGKILL");
    assert_eq!(action["outcome"]["contained"], true);
    assert_eq!(action["usage_after_bytes"], 520 * MIB);
    let before = action["usage_before_bytes"].as_u64().expect("before");
    assert_eq!(action["freed_bytes"], before - 520 * MIB, "{action}");
}

#[test]
fn a_steady_pool_and_log_stay_calm() {
    let mut f = fixture(fixture::settings());
    for i in 0..20u64 {
        f.pipe.sample_memory(SEC + i * 250 * MS);
        assert!(f.pipe.check(SEC + i * 250 * MS).expect("check").is_empty());
    }
    assert!(f.alerts().is_empty(), "usage holds at half the limit");
    let mut f = fixture(fixture::settings());
    let (requests, _) = grow(&mut f, 16);
    assert!(requests.is_empty());
    assert_eq!(f.alerts()[0]["action"], "log");
}

#[test]
fn host_pressure_under_a_cgroup_scope_is_reported_not_acted_on() {
    let mut settings = fixture::settings();
    settings.mem_action = ActionKind::Kill;
    let mut f = fixture(settings);
    f.pipe.scope = crate::host::scope::Scope {
        cgroups: vec![(1, PIDS_JOBS.into())],
    };
    *f.host.host_memory.lock().expect("lock") = Some(crate::detect::memory::MemUsage {
        usage: 20 * 1024 * MIB,
        unreclaimable: 20 * 1024 * MIB,
        limit: 24 * 1024 * MIB,
    });
    *f.host.pressure.lock().expect("lock") = Some(MemoryPressure {
        some_avg10: 60.0,
        full_avg10: 40.0,
    });
    let mut requests = Vec::new();
    for i in 0..60u64 {
        let t = SEC + i * 250 * MS;
        f.pipe.sample_memory(t);
        requests.extend(f.pipe.check(t).expect("check"));
    }
    let pressure: Vec<_> = f
        .alerts()
        .into_iter()
        .filter(|a| a["rule"] == "memory_pressure")
        .collect();
    let a = pressure
        .first()
        .unwrap_or_else(|| panic!("no pressure alert"));
    assert!(a["offender"].is_null(), "{a}");
    assert!(
        a["note"].as_str().is_some_and(|n| n.contains("--cgroup")),
        "{a}"
    );
    assert_eq!(a["pressure"]["psi_full_avg10"], 40.0);
    assert!(
        requests
            .iter()
            .all(|r| r.rule != crate::output::record::Rule::MemoryPressure)
    );
}

/// Two workers grow alike; `--prefer` names the one to take first, and an
/// ignored program is never taken. Returns the requests.
fn two_workers(f: &mut Fixture) -> Vec<crate::pipeline::ActionRequest> {
    f.host.set_memcg(MEMORY_JOBS, 500 * MIB, 1024 * MIB);
    f.handle(fixture::fork(SEC, 100, 101, "server"));
    f.handle(fixture::exec(SEC + MS, 101, "/usr/bin/cache"));
    f.handle(fixture::fork(SEC, 100, 102, "server"));
    f.handle(fixture::exec(SEC + MS, 102, "/usr/bin/batch"));
    let mut requests = Vec::new();
    for i in 0..=16u64 {
        let t = SEC + i * 250 * MS;
        f.host
            .set_memcg(MEMORY_JOBS, (500 + 20 * i) * MIB, 1024 * MIB);
        f.host.processes.lock().expect("lock").extend([
            (100, 10 * MIB),
            (101, (40 + 11 * i) * MIB),
            (102, (40 + 9 * i) * MIB),
        ]);
        f.pipe.sample_memory(t);
        requests.extend(f.pipe.check(t).expect("check"));
    }
    requests
}

fn members(requests: &[crate::pipeline::ActionRequest]) -> Vec<u32> {
    let mut pids: Vec<u32> = requests
        .first()
        .expect("a request")
        .members
        .iter()
        .map(|m| m.tgid)
        .collect();
    pids.sort_unstable();
    pids
}

#[test]
fn prefer_and_ignore_choose_among_growers() {
    let mut settings = fixture::settings();
    settings.mem_action = ActionKind::Kill;
    let known = [(100, 1, "server")];
    // Neither worker alone explains the pool's growth: their server's
    // subtree does.
    let mut f = Fixture::new(settings.clone(), Vec::new(), &known, &[]);
    let requests = two_workers(&mut f);
    let a = f.alerts().into_iter().next().expect("an alert");
    assert_eq!(a["offender"]["pid"], 100, "{a}");
    assert_eq!(members(&requests), [100, 101, 102]);

    let mut preferring = settings.clone();
    preferring.prefer = vec![regex::Regex::new("^/usr/bin/batch$").expect("regex")];
    let mut f = Fixture::new(preferring, Vec::new(), &known, &[]);
    let requests = two_workers(&mut f);
    let a = f.alerts().into_iter().next().expect("an alert");
    assert_eq!(a["offender"]["pid"], 102, "--prefer takes batch first: {a}");
    assert_eq!(members(&requests), [102]);

    let mut ignoring = settings;
    ignoring.ignore_memory = fixture::ignoring("memory:program=/cache$");
    let mut f = Fixture::new(ignoring, Vec::new(), &known, &[]);
    let requests = two_workers(&mut f);
    assert!(!members(&requests).contains(&101), "the cache is ignored");
}

#[test]
fn little_headroom_left_is_named_at_once() {
    let mut settings = fixture::settings();
    settings.mem_action = ActionKind::Stop;
    let mut f = fixture(settings);
    // 900 MiB of 1 GiB and growing: past the 80 % headroom line. The
    // worker's rss records say it grew (from 640 MiB, a step at a time).
    let mut requests = Vec::new();
    for i in 0..4u64 {
        let t = SEC + i * 250 * MS;
        let step = 10 + i as u32;
        f.handle(fixture::rss(t, 101, step, (i > 0).then(|| step - 1)));
        f.host
            .set_memcg(MEMORY_JOBS, (880 + 10 * i) * MIB, 1024 * MIB);
        f.host
            .processes
            .lock()
            .expect("lock")
            .extend([(100, 10 * MIB), (101, (700 + 10 * i) * MIB)]);
        f.pipe.sample_memory(t);
        requests.extend(f.pipe.check(t).expect("check"));
    }
    let a = f.alerts().into_iter().next().expect("an alert");
    assert_eq!(a["rule"], "memory_headroom", "{a}");
    assert!(a["percent"].as_f64().is_some_and(|p| p >= 80.0), "{a}");
    assert!(requests.iter().any(|r| r.kind == ActionKind::Stop));
}

#[test]
fn a_removed_pool_is_forgotten() {
    let mut f = fixture(fixture::settings());
    f.pipe.sample_memory(SEC);
    // The cgroup goes (a transient scope ends): unreadable and gone.
    f.host.memcg.lock().expect("lock").clear();
    for i in 1..20u64 {
        let t = SEC + i * 250 * MS;
        f.pipe.sample_memory(t);
        f.pipe.check(t).expect("check");
    }
    assert!(f.alerts().is_empty());
}

#[test]
fn dry_run_and_a_log_policy_take_nothing() {
    let mut settings = fixture::settings();
    settings.mem_action = ActionKind::Kill;
    settings.dry_run = true;
    let mut f = fixture(settings.clone());
    let (requests, _) = grow(&mut f, 16);
    assert!(requests.is_empty());
    let records = f.records();
    assert!(
        records
            .iter()
            .any(|r| r["kind"] == "action" && r["dry_run"] == true),
        "{records:#?}"
    );

    settings.dry_run = false;
    settings.policies = fixture::policy(MEMORY_JOBS, |p| p.mem_action = Some(ActionKind::Log));
    let mut f = fixture(settings);
    let (requests, _) = grow(&mut f, 16);
    assert!(requests.is_empty());
    assert_eq!(f.alerts()[0]["action"], "log");
}
