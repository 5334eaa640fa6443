//! The fork detector's glue: bombs, builds and pools through
//! `Pipeline::handle` and `check`; offenders, protection, policies,
//! --dry-run, the fork probe's condemnations and lost events.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use crate::{
    detect::switches::Detector,
    kernel::decode::{Condemned, ExitStatus},
    pipeline::fixture::{self, *},
    respond::policy::ActionKind,
};

fn fixture(settings: crate::pipeline::Settings, protected: &[u32]) -> Fixture {
    Fixture::new(settings, Vec::new(), &[(100, 1, "bash")], protected)
}

#[test]
fn a_bomb_is_named_at_its_root_and_its_subtree_taken() {
    let settings = fixture::killing();
    let mut f = fixture(settings, &[]);
    let (requests, born) = bomb(&mut f, 9);
    let alerts = f.alerts();
    let a = alerts
        .iter()
        .find(|a| a["rule"] == "explosion")
        .unwrap_or_else(|| panic!("no explosion: {alerts:#?}"));
    assert_eq!(a["offender"]["pid"], 100, "{a}");
    assert_eq!(a["cgroup"], PIDS_JOBS);
    assert!(a["births"].as_u64().is_some_and(|b| b >= 100), "{a}");
    assert_eq!(a["action"], "kill");
    let r = requests.first().expect("a kill was requested");
    assert_eq!((r.detector, r.kind), (Detector::Fork, ActionKind::Kill));
    // Every member born by the verdict, the root among them.
    assert!(r.members.iter().any(|m| m.tgid == 100));
    assert!(r.members.len() >= 128, "{} members", r.members.len());
    assert!(r.members.iter().all(|m| born.contains(&m.tgid)));
    // One action at a time per subtree.
    assert_eq!(requests.len(), 1, "{requests:?}");
}

#[test]
fn a_protected_root_is_passed_over_for_its_children() {
    let settings = fixture::killing();
    let mut f = fixture(settings, &[100]);
    let (requests, _) = bomb(&mut f, 9);
    let a = f
        .alerts()
        .into_iter()
        .find(|a| a["rule"] == "explosion")
        .expect("an explosion");
    assert_ne!(a["offender"]["pid"], 100, "{a}");
    assert!(
        requests
            .iter()
            .all(|r| r.members.iter().all(|m| m.tgid != 100))
    );
}

#[test]
fn log_alerts_and_asks_for_nothing_dry_run_says_what_it_would_do() {
    let mut f = fixture(fixture::settings(), &[]);
    let (requests, _) = bomb(&mut f, 9);
    assert!(requests.is_empty());
    assert!(f.alerts().iter().any(|a| a["action"] == "log"));

    let mut settings = fixture::killing();
    settings.dry_run = true;
    let mut f = fixture(settings, &[]);
    let (requests, _) = bomb(&mut f, 9);
    assert!(requests.is_empty(), "nothing is run under --dry-run");
    let records = f.records();
    let action = records
        .iter()
        .find(|r| r["kind"] == "action")
        .unwrap_or_else(|| panic!("no action record: {records:#?}"));
    assert_eq!(action["dry_run"], true);
    assert!(
        action["members"].as_array().is_some_and(|m| m.len() >= 128),
        "{action}"
    );
}

#[test]
fn a_policy_or_an_ignored_cgroup_leaves_a_bomb_alone() {
    let mut settings = fixture::killing();
    settings.policies = fixture::policy(PIDS_JOBS, |p| p.fork_action = Some(ActionKind::Log));
    let mut f = fixture(settings, &[]);
    let (requests, _) = bomb(&mut f, 9);
    assert!(requests.is_empty(), "the policy says log");
    assert!(f.alerts().iter().any(|a| a["action"] == "log"));

    let mut settings = fixture::killing();
    settings.ignore_fork = fixture::ignoring(&format!("fork:cgroup=^{PIDS_JOBS}$"));
    let mut f = fixture(settings, &[]);
    let (requests, _) = bomb(&mut f, 9);
    assert!(requests.is_empty() && f.alerts().is_empty());
}

#[test]
fn a_wide_build_is_no_bomb() {
    let settings = fixture::killing();
    let mut f = fixture(settings, &[]);
    // make -j: 500 compilers a second, each exec'd and done in 30 ms.
    let mut requests = Vec::new();
    for i in 0..2_000u32 {
        let t = SEC + u64::from(i) * 2 * MS;
        let pid = 1000 + i;
        f.handle(fixture::fork(t, 100, pid, "make"));
        f.handle(fixture::exec(t + MS / 2, pid, "/usr/bin/cc"));
        if i >= 15 {
            f.handle(fixture::exit(
                t + MS,
                pid - 15,
                100,
                ExitStatus::Exited(0),
                "cc",
            ));
        }
        if i % 10 == 0 {
            requests.extend(f.pipe.check(t + MS).expect("check"));
        }
    }
    assert!(requests.is_empty());
    assert!(f.alerts().is_empty());
}

fn condemned(at: u64, root: Option<u32>, forker: u32) -> crate::kernel::decode::Event {
    crate::kernel::decode::Event::Condemned(Condemned {
        boot_ns: at,
        tag: guard_common::auto_tag(root.unwrap_or(forker), at),
        root_tgid: root,
        births: 140,
        growth: 60,
        window_ns: SEC,
        forker_tgid: forker,
        signal: libc::SIGKILL,
        deep_births: 120,
    })
}

#[test]
fn the_probes_condemnation_is_alerted_and_contained_by_the_agent() {
    let settings = fixture::killing();
    let mut f = fixture(settings, &[]);
    for (i, child) in (101..=110u32).enumerate() {
        f.handle(fixture::fork(SEC + i as u64 * MS, 100, child, "bash"));
    }
    f.handle(condemned(SEC + 20 * MS, Some(100), 105));
    let requests = f.pipe.check(SEC + 21 * MS).expect("check");
    let a = f.alerts().into_iter().next().expect("an alert");
    assert_eq!(
        (a["rule"].as_str(), a["condemned_by_kernel"].as_bool()),
        (Some("explosion"), Some(true))
    );
    assert_eq!(a["offender"]["pid"], 100);
    assert_eq!(a["births"], 140);
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].members.len(),
        11,
        "the root and its ten children"
    );

    // A root that was gone before the agent knew it: said so.
    let settings = fixture::killing();
    let mut f = fixture(settings, &[]);
    f.handle(condemned(SEC, Some(4242), 4243));
    f.pipe.check(SEC + MS).expect("check");
    let a = f.alerts().into_iter().next().expect("an alert");
    assert_eq!(a["offender"]["note"], "gone before guard knew it", "{a}");
    assert_eq!(a["offender"]["pid"], 4242);
}

#[test]
fn after_lost_events_the_verdict_waits_for_counts_it_can_trust() {
    let settings = fixture::killing();
    let lost = Arc::new(AtomicU64::new(0));
    let counter = lost.clone();
    let mut f = fixture(settings, &[])
        .map_pipe(|p| p.with_loss_counter(Box::new(move || counter.load(Ordering::Relaxed))));
    // Births the table saw, of members whose exits may have been lost:
    // none of them is in /proc (the fixture's has only the root).
    let mut next = 1000u32;
    let mut members = vec![100u32];
    for round in 1..=8u32 {
        let t = SEC + u64::from(round) * 5 * MS;
        for parent in members.clone() {
            f.handle(fixture::fork(t, parent, next, "bash"));
            members.push(next);
            next += 1;
        }
    }
    lost.store(7, Ordering::Relaxed);
    let requests = f.pipe.check(SEC + 45 * MS).expect("check");
    assert!(
        requests.is_empty(),
        "judged on counts a loss may have inflated: {requests:?}"
    );
    assert!(f.alerts().is_empty());
    // Recounted from what exists: the root alone, so no growth since.
    let requests = f.pipe.check(SEC + 46 * MS).expect("check");
    assert!(requests.is_empty() && f.alerts().is_empty());
}

#[test]
fn a_rush_toward_pids_max_is_named_before_the_limit() {
    let mut settings = fixture::settings();
    settings.fork_action = ActionKind::Stop;
    let mut f = fixture(settings, &[]);
    // A spawner that does not copy itself: `while :; do sleep 1000 & done`,
    // 400 a second, none exits, pids.max 120 in the cgroup.
    let mut requests = Vec::new();
    for i in 0..100u32 {
        let t = SEC + u64::from(i) * 2_500_000;
        f.handle(fixture::fork(t, 100, 1000 + i, "bash"));
        f.handle(fixture::exec(t + 100_000, 1000 + i, "/usr/bin/sleep"));
        f.host.set_pids(PIDS_JOBS, 2 + u64::from(i), Some(120));
        if i % 4 == 0 {
            f.pipe.sample_pids(t + 200_000);
        }
        requests.extend(f.pipe.check(t + 200_000).expect("check"));
    }
    let alerts = f.alerts();
    let rush = alerts
        .iter()
        .find(|a| a["rule"] == "pids_limit_rush")
        .unwrap_or_else(|| panic!("no rush alert: {alerts:#?}"));
    assert_eq!(rush["limit"], 120);
    assert!(rush["current"].as_u64().is_some_and(|c| c < 120), "{rush}");
    assert_eq!(rush["offender"]["pid"], 100, "the spawner: {rush}");
    assert!(requests.iter().any(|r| r.kind == ActionKind::Stop));
}

#[test]
fn a_thread_bomb_is_a_bomb_of_tasks() {
    let settings = fixture::killing();
    let mut f = fixture(settings, &[]);
    // Threads of 100 that start threads, every 2 ms for 400 ms.
    let mut threads = vec![100u32];
    let mut requests = Vec::new();
    for (next, round) in (5000u32..).zip(0..200u64) {
        let t = SEC + round * 2 * MS;
        let parent = threads[(round as usize) % threads.len()];
        let event = crate::kernel::decode::Event::Fork(crate::kernel::decode::Fork {
            boot_ns: t,
            parent_pid: parent,
            parent_tgid: 100,
            child_pid: next,
            child_tgid: 100,
            child_ppid: 1,
            kernel_thread: false,
            child_cgroup_id: 0,
            parent_comm: crate::kernel::decode::Comm::from_str_lossy("python3"),
            child_comm: crate::kernel::decode::Comm::from_str_lossy("python3"),
        });
        f.handle(event);
        threads.push(next);
        requests.extend(f.pipe.check(t).expect("check"));
    }
    let alerts = f.alerts();
    let a = alerts
        .iter()
        .find(|a| a["rule"] == "explosion")
        .unwrap_or_else(|| panic!("no explosion: {alerts:#?}"));
    assert_eq!(a["offender"]["pid"], 100, "{a}");
    assert!(
        requests
            .iter()
            .any(|r| r.members.iter().any(|m| m.tgid == 100))
    );
}

#[test]
fn a_bomb_outside_the_scope_is_not_guards_business() {
    let settings = fixture::killing();
    let mut f = fixture(settings, &[]);
    f.pipe.scope = crate::host::scope::Scope {
        cgroups: vec![(1, "/sys/fs/cgroup/pids/elsewhere".into())],
    };
    let (requests, _) = bomb(&mut f, 9);
    assert!(requests.is_empty());
    assert!(f.alerts().is_empty());
}

#[test]
fn one_explosion_is_one_alert() {
    let mut f = fixture(fixture::settings(), &[]);
    bomb(&mut f, 11);
    let explosions = f
        .alerts()
        .into_iter()
        .filter(|a| a["rule"] == "explosion")
        .count();
    assert_eq!(explosions, 1, "one bomb within a window alerts once");
}

#[test]
fn the_probes_condemnation_under_a_log_policy_asks_for_nothing() {
    let mut settings = fixture::killing();
    settings.policies = fixture::policy(PIDS_JOBS, |p| p.fork_action = Some(ActionKind::Log));
    let mut f = fixture(settings, &[]);
    for child in 101..=110u32 {
        f.handle(fixture::fork(SEC, 100, child, "bash"));
    }
    f.handle(condemned(SEC + MS, Some(100), 105));
    assert!(f.pipe.check(SEC + 2 * MS).expect("check").is_empty());
}

#[test]
fn a_condemnation_of_a_subtree_under_action_is_not_acted_on_twice() {
    let settings = fixture::killing();
    let mut f = fixture(settings, &[]);
    for child in 101..=110u32 {
        f.handle(fixture::fork(SEC, 100, child, "bash"));
    }
    let event = condemned(SEC + MS, Some(100), 105);
    f.handle(event.clone());
    let first = f.pipe.check(SEC + 2 * MS).expect("check");
    assert_eq!(first.len(), 1);
    // A second CPU met the rule at the same moment: its record follows.
    f.handle(event);
    assert!(f.pipe.check(SEC + 3 * MS).expect("check").is_empty());
    let alerts = f.alerts();
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
}
