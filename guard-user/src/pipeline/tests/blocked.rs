//! The blocked-task detector's glue: tasks from the kernel's map past the
//! threshold, where they wait (through the host), storms and their end.

use crate::{
    detect::blocked::BlockedTask,
    kernel::decode::Comm,
    pipeline::fixture::{self, *},
};

fn fixture() -> Fixture {
    Fixture::new(
        fixture::settings(),
        Vec::new(),
        &[(100, 1, "postgres")],
        &[],
    )
}

/// `n` threads of 100 in D state since `since`.
fn blocked(n: u32, since: u64) -> Vec<BlockedTask> {
    (0..n)
        .map(|i| BlockedTask {
            task: 0xffff_0000 + u64::from(i),
            pid: 100 + i,
            tgid: 100,
            since_ns: since,
            killable: false,
            comm: Comm::from_str_lossy("postgres"),
        })
        .collect()
}

#[test]
fn a_task_past_the_threshold_is_reported_with_its_wait() {
    let mut f = fixture();
    let book = f
        .pipe
        .sample_blocked(10 * SEC, &blocked(1, 4 * SEC))
        .expect("sample");
    let records = f.records();
    let b = records
        .iter()
        .find(|r| r["kind"] == "blocked")
        .unwrap_or_else(|| panic!("no blocked record: {records:#?}"));
    assert_eq!(
        (b["pid"].as_u64(), b["tgid"].as_u64()),
        (Some(100), Some(100))
    );
    assert_eq!(b["blocked_ms"], 6000);
    assert_eq!(b["wchan"], "fixture_wait");
    assert_eq!(b["cgroup"], PIDS_JOBS);
    assert_eq!(
        book.watch,
        [(0xffff_0000, 4 * SEC)],
        "the kernel is asked for its release"
    );
    // Not yet past the threshold: nothing.
    let mut f = fixture();
    f.pipe
        .sample_blocked(10 * SEC, &blocked(1, 8 * SEC))
        .expect("sample");
    assert!(f.records().is_empty());
}

#[test]
fn a_storm_without_memory_pressure_is_reported_and_acted_on_by_nobody() {
    let mut f = fixture();
    f.pipe
        .sample_blocked(10 * SEC, &blocked(12, 3 * SEC))
        .expect("sample");
    let storm = f
        .alerts()
        .into_iter()
        .find(|a| a["rule"] == "blocked_storm")
        .expect("a storm");
    assert_eq!(storm["count"], 12);
    assert!(storm["offender"].is_null());
    assert_eq!(storm["action"], "log");
    assert!(
        storm["note"]
            .as_str()
            .is_some_and(|n| n.contains("cannot be killed")),
        "{storm}"
    );
    // They run again, and no `unblocked` event came: missing from two
    // snapshots, each is released (approximately) and the storm resolved.
    let book = f.pipe.sample_blocked(20 * SEC, &[]).expect("sample");
    assert!(book.forget.is_empty(), "missing once: not yet");
    let book = f.pipe.sample_blocked(21 * SEC, &[]).expect("sample");
    assert_eq!(book.forget.len(), 12);
    let records = f.records();
    assert_eq!(
        records
            .iter()
            .filter(|r| r["kind"] == "unblocked" && r["approximate"] == true)
            .count(),
        12
    );
    let resolved = records
        .iter()
        .find(|r| r["kind"] == "resolved")
        .unwrap_or_else(|| panic!("not resolved: {records:#?}"));
    assert_eq!(resolved["peak"], 12);
}

#[test]
fn ignored_and_switched_off_report_nothing() {
    let mut settings = fixture::settings();
    settings.ignore_blocked = fixture::ignoring(&format!("blocked:cgroup=^{PIDS_JOBS}$"));
    let mut f = Fixture::new(settings, Vec::new(), &[(100, 1, "postgres")], &[]);
    f.pipe
        .sample_blocked(10 * SEC, &blocked(12, 3 * SEC))
        .expect("sample");
    assert!(f.records().is_empty());

    let mut settings = fixture::settings();
    settings.off = vec![crate::detect::switches::Detector::Blocked];
    let mut f = Fixture::new(settings, Vec::new(), &[(100, 1, "postgres")], &[]);
    let book = f
        .pipe
        .sample_blocked(10 * SEC, &blocked(12, 3 * SEC))
        .expect("sample");
    assert!(f.records().is_empty() && book.watch.is_empty());
}

#[test]
fn a_storm_under_memory_pressure_blames_the_memory_runaway() {
    let mut settings = fixture::settings();
    settings.mem_action = crate::respond::policy::ActionKind::Kill;
    let mut f = Fixture::new(settings, Vec::new(), &[(100, 1, "postgres")], &[]);
    const MIB: u64 = 1 << 20;
    f.host.set_memcg(MEMORY_JOBS, 500 * MIB, 1024 * MIB);
    f.handle(fixture::fork(SEC, 100, 101, "postgres"));
    f.handle(fixture::exec(SEC + MS, 101, "/usr/bin/hog"));
    // The hog grows its pool toward the limit while tasks pile up in D
    // state, and the host stalls on memory.
    *f.host.pressure.lock().expect("lock") = Some(crate::host::observe::MemoryPressure {
        some_avg10: 70.0,
        full_avg10: 45.0,
    });
    for i in 0..=20u64 {
        let t = SEC + i * 250 * MS;
        f.host
            .set_memcg(MEMORY_JOBS, (500 + 20 * i) * MIB, 1024 * MIB);
        f.host
            .processes
            .lock()
            .expect("lock")
            .extend([(100, 10 * MIB), (101, (100 + 20 * i) * MIB)]);
        let step = 2 + (i as u32 * 20 / 64);
        f.handle(fixture::rss(t, 101, step, Some(step.saturating_sub(1))));
        f.pipe.sample_memory(t);
    }
    f.records();
    f.pipe
        .sample_blocked(SEC + 5 * SEC + 500 * MS, &blocked(12, SEC / 2))
        .expect("sample");
    let storm = f
        .alerts()
        .into_iter()
        .find(|a| a["rule"] == "blocked_storm")
        .expect("a storm");
    assert!(
        storm["memory_pressure"]["reasons"]
            .as_array()
            .is_some_and(|r| !r.is_empty()),
        "{storm}"
    );
    assert_eq!(storm["offender"]["pid"], 101, "{storm}");
    assert_eq!(storm["offender"]["memory_cgroup"], MEMORY_JOBS);
    assert_eq!(storm["action"], "kill");
}

#[test]
fn a_task_the_probe_saw_run_again_is_released_once() {
    let mut f = fixture();
    f.pipe
        .sample_blocked(10 * SEC, &blocked(1, 4 * SEC))
        .expect("sample");
    f.records();
    // The probe's exact record: the task ran again at 11 s.
    f.handle(crate::kernel::decode::Event::Unblocked(
        crate::kernel::decode::Unblocked {
            boot_ns: 11 * SEC,
            pid: 100,
            tgid: 100,
            killable: false,
            since_ns: 4 * SEC,
            blocked_ns: 7 * SEC,
            comm: Comm::from_str_lossy("postgres"),
        },
    ));
    // Snapshots no longer hold it: no second, approximate release.
    f.pipe.sample_blocked(12 * SEC, &[]).expect("sample");
    f.pipe.sample_blocked(13 * SEC, &[]).expect("sample");
    let records = f.records();
    assert!(
        records.iter().all(|r| r.get("approximate").is_none()),
        "{records:#?}"
    );
}

/// A storm counts the tasks no signal can wake (TASK_KILLABLE ones are
/// counted apart): 10 of them make one, whatever the killable ones.
#[test]
fn killable_tasks_are_said_so_and_counted_apart() {
    let mut f = fixture();
    let mut tasks = blocked(14, 3 * SEC);
    for t in tasks.iter_mut().take(5) {
        t.killable = true;
    }
    f.pipe.sample_blocked(10 * SEC, &tasks).expect("sample");
    assert!(
        f.records().iter().all(|r| r["rule"] != "blocked_storm"),
        "9 unkillable tasks are no storm"
    );
    let mut f = fixture();
    let mut tasks = blocked(15, 3 * SEC);
    for t in tasks.iter_mut().take(5) {
        t.killable = true;
    }
    f.pipe.sample_blocked(10 * SEC, &tasks).expect("sample");
    let records = f.records();
    let killable = records
        .iter()
        .filter(|r| r["kind"] == "blocked" && r["killable"] == true)
        .count();
    assert_eq!(killable, 5);
    let storm = records
        .iter()
        .find(|r| r["rule"] == "blocked_storm")
        .expect("a storm");
    assert_eq!(
        (storm["count"].as_u64(), storm["killable"].as_u64()),
        (Some(10), Some(5))
    );
}
