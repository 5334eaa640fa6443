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
