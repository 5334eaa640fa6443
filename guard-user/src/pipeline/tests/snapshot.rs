//! The `snapshot` record: a growing cgroup with its rate, its time to the
//! limit and who would be acted on.

use crate::{
    output::record::AgentState,
    pipeline::fixture::{self, *},
};

fn agent() -> AgentState {
    AgentState {
        events_per_sec: 0.0,
        lost: 0,
        cpu_percent: 0.0,
        rss_bytes: 0,
        probes: 0,
        incidents_open: 0,
        clients: 1,
    }
}

#[test]
fn a_growing_cgroup_shows_its_rate_its_time_to_the_limit_and_its_spawner() {
    let mut f = Fixture::new(fixture::settings(), Vec::new(), &[(100, 1, "bash")], &[]);
    // `while :; do sleep 1000 & sleep 0.2; done`: five a second, toward 120.
    for i in 0..40u32 {
        let t = SEC + u64::from(i) * 200 * MS;
        f.handle(fixture::fork(t, 100, 1000 + i, "bash"));
        f.handle(fixture::exec(t + MS, 1000 + i, "/usr/bin/sleep"));
        f.host.set_pids(PIDS_JOBS, 2 + u64::from(i), Some(120));
        f.pipe.sample_pids(t + 2 * MS);
    }
    let now = SEC + 40 * 200 * MS;
    let snap = f.pipe.snapshot(now, agent());
    let row = snap
        .pids
        .iter()
        .find(|r| r.cgroup == PIDS_JOBS)
        .unwrap_or_else(|| panic!("no row for {PIDS_JOBS}: {snap:#?}"));
    assert_eq!((row.tasks, row.limit), (41, Some(120)));
    assert!((row.per_sec - 5.0).abs() < 0.5, "{row:?}");
    // Five births in the last second's window (the fork rule's).
    let births = row.births_per_sec.expect("a population");
    assert!((births - 5.0).abs() <= 1.0, "{row:?}");
    let eta = row.eta_secs.expect("a time to the limit");
    assert!((eta - 79.0 / 5.0).abs() < 2.0, "{row:?}");
    let who = row.offender.as_ref().expect("the spawner");
    assert_eq!((who.pid, who.comm.as_str()), (100, "bash"));
    assert_eq!(who.subtree_size, 41);

    // It stops growing: nobody to act on, no time to the limit.
    for i in 0..120u32 {
        let t = now + u64::from(i + 1) * 200 * MS;
        f.pipe.sample_pids(t);
    }
    let snap = f.pipe.snapshot(now + 121 * 200 * MS, agent());
    let row = snap
        .pids
        .iter()
        .find(|r| r.cgroup == PIDS_JOBS)
        .expect("the row");
    assert!(row.offender.is_none() && row.eta_secs.is_none(), "{row:?}");
}
