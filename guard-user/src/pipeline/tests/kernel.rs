//! The glue's dealings with the kernel's side (`respond::act::System`, a
//! recording fake here): tags and budgets of suspected subtrees, follow-up
//! rounds of an action, and the fork probe's exemptions.

use crate::{
    kernel::decode::ExitStatus,
    pipeline::fixture::{self, *},
    respond::{act::ProcState, policy::ActionKind},
};

fn fixture(settings: crate::pipeline::Settings) -> Fixture {
    Fixture::new(settings, Vec::new(), &[(100, 1, "bash")], &[])
}

#[test]
fn a_suspected_subtree_is_tagged_and_budgeted_before_any_alert() {
    let mut f = fixture(killing());
    // Six rounds: 63 births, a quarter of the way to the rule and more.
    let (requests, members) = bomb(&mut f, 6);
    assert!(requests.is_empty(), "no verdict yet: {requests:?}");
    assert!(f.alerts().is_empty());
    let tags = f.system.tags.lock().expect("lock").clone();
    let root_tag = tags
        .get(&100)
        .copied()
        .expect("the suspect's root is tagged");
    assert!(
        members.iter().all(|m| tags.get(m) == Some(&root_tag)),
        "every member carries the root's tag"
    );
    assert_eq!(*f.system.budgets.lock().expect("lock"), [root_tag]);
    // Members born from now on join the tag.
    f.handle(fixture::fork(SEC + 40 * MS, 1000, 4242, "bash"));
    assert_eq!(
        f.system.tags.lock().expect("lock").get(&4242),
        Some(&root_tag)
    );
}

#[test]
fn log_and_dry_run_tag_nothing() {
    let mut f = fixture(fixture::settings());
    bomb(&mut f, 6);
    assert!(f.system.tags.lock().expect("lock").is_empty());
    let mut settings = killing();
    settings.dry_run = true;
    let mut f = fixture(settings);
    bomb(&mut f, 9);
    assert!(f.system.tags.lock().expect("lock").is_empty());
    assert!(f.system.budgets.lock().expect("lock").is_empty());
}

#[test]
fn a_follow_up_takes_the_members_a_kill_missed_and_stops_when_none_is_left() {
    let mut f = fixture(killing());
    let (requests, born) = bomb(&mut f, 9);
    let request = requests.first().expect("a kill").clone();
    // Two members (of those at the verdict, and those born since) still
    // run; the rest are gone.
    {
        let mut states = f.system.states.lock().expect("lock");
        for &pid in &born {
            states.insert(pid, ProcState::Gone);
        }
        states.insert(request.members[3].tgid, ProcState::Running);
        states.insert(request.members[5].tgid, ProcState::Zombie);
    }
    let follow_ups = f
        .pipe
        .action_done(&request, &outcome(request.members.len()), 0)
        .expect("reported");
    assert_eq!(follow_ups.len(), 1);
    let left: Vec<u32> = follow_ups[0].members.iter().map(|m| m.tgid).collect();
    assert_eq!(
        left,
        [request.members[3].tgid],
        "the running one, not the zombie"
    );
    assert_eq!(follow_ups[0].follow_ups, 1);
    // It goes; no further round.
    f.system
        .states
        .lock()
        .expect("lock")
        .insert(request.members[3].tgid, ProcState::Gone);
    assert!(
        f.pipe
            .action_done(&follow_ups[0], &outcome(1), 0)
            .expect("reported")
            .is_empty()
    );
    let actions = f
        .records()
        .into_iter()
        .filter(|r| r["kind"] == "action")
        .count();
    assert_eq!(actions, 2, "each round is reported");
}

#[test]
fn a_stop_is_done_with_stopped_members_and_gives_up_after_its_rounds() {
    let mut settings = fixture::settings();
    settings.fork_action = ActionKind::Stop;
    let mut f = fixture(settings);
    let (requests, born) = bomb(&mut f, 9);
    let request = requests.first().expect("a stop").clone();
    {
        let mut states = f.system.states.lock().expect("lock");
        for &pid in &born {
            states.insert(pid, ProcState::Stopped);
        }
    }
    let done = f
        .pipe
        .action_done(&request, &outcome(request.members.len()), 0)
        .expect("reported");
    assert!(done.is_empty(), "stopped members need no second SIGSTOP");
    // Members that cannot be reached: after a round that signalled none,
    // guard stops trying (and says so) instead of looping for ever.
    let mut f = fixture(killing());
    let (requests, _) = bomb(&mut f, 9);
    let mut round = requests.first().expect("a kill").clone();
    let mut rounds = 0;
    loop {
        let next = f
            .pipe
            .action_done(&round, &outcome(0), 0)
            .expect("reported");
        let Some(next) = next.into_iter().next() else {
            break;
        };
        rounds += 1;
        assert!(rounds <= 3, "more follow-ups than MAX_FOLLOW_UPS");
        round = next;
    }
    assert!(
        rounds <= 1,
        "a round that signalled nobody ends it: {rounds}"
    );
}

/// The fork probe judging by itself, make ignored, and 200 running make.
fn make_ignored() -> Fixture {
    let mut settings = killing();
    settings.kernel_tags = true;
    settings.ignore_fork = fixture::ignoring("fork:program=^/usr/bin/make$");
    let mut f = fixture(settings);
    f.handle(fixture::fork(SEC, 100, 200, "bash"));
    f.handle(fixture::exec(SEC + MS, 200, "/usr/bin/make"));
    f
}

#[test]
fn ignored_programs_and_cgroups_are_exempt_in_the_fork_probe() {
    let mut f = make_ignored();
    assert_eq!(
        f.system.exempt_pids.lock().expect("lock").get(&200),
        Some(&true)
    );
    f.handle(fixture::exit(
        SEC + 2 * MS,
        200,
        100,
        ExitStatus::Exited(0),
        "make",
    ));
    assert_eq!(
        f.system.exempt_pids.lock().expect("lock").get(&200),
        Some(&false),
        "exempt until its exit"
    );

    let mut settings = killing();
    settings.kernel_tags = true;
    settings.ignore_fork = fixture::ignoring(&format!("fork:cgroup=^{PIDS_JOBS}$"));
    let mut f = fixture(settings);
    f.pipe.seed_detector(SEC);
    assert_eq!(
        *f.system.exempt_cgroups.lock().expect("lock"),
        [(PIDS_JOBS.to_owned(), guard_common::SCOPE_PROTECTED)]
    );
}

#[test]
fn a_policy_softer_than_the_probes_action_is_what_the_probe_does_there() {
    use crate::pipeline::kernel_verdict;
    use guard_common::{SCOPE_IN_REFUSE, SCOPE_IN_STOP, SCOPE_PROTECTED};
    let with = |flag: ActionKind, policy: Option<ActionKind>| {
        let mut s = fixture::settings();
        s.fork_action = flag;
        s.policies = fixture::policy("/cg/db", |p| p.fork_action = policy);
        (
            kernel_verdict(&s, "/cg/db/x"),
            kernel_verdict(&s, "/cg/other"),
        )
    };
    // Under a kill, a refuse policy refuses only and a stop policy stops.
    assert_eq!(
        with(ActionKind::Kill, Some(ActionKind::Refuse)),
        (Some(SCOPE_IN_REFUSE), None)
    );
    assert_eq!(
        with(ActionKind::Kill, Some(ActionKind::RefuseThenKill)),
        (Some(SCOPE_IN_REFUSE), None)
    );
    assert_eq!(
        with(ActionKind::Kill, Some(ActionKind::Stop)),
        (Some(SCOPE_IN_STOP), None)
    );
    // A log policy is left alone; under a stop, a stop policy is the
    // probe's own.
    assert_eq!(
        with(ActionKind::Kill, Some(ActionKind::Log)),
        (Some(SCOPE_PROTECTED), None)
    );
    assert_eq!(with(ActionKind::Stop, Some(ActionKind::Stop)), (None, None));
    // A kill policy under a refuse flag: the probe kills (the strongest),
    // and refuses only in the cgroups the flag covers.
    assert_eq!(
        with(ActionKind::Refuse, Some(ActionKind::Kill)),
        (None, Some(SCOPE_IN_REFUSE))
    );
    // Two refusals are one in the kernel.
    assert_eq!(
        with(ActionKind::RefuseThenKill, Some(ActionKind::Refuse)),
        (None, None)
    );
}

#[test]
fn a_condemnation_of_an_ignored_subtree_is_released_without_an_alert() {
    let mut f = make_ignored();
    for child in 201..=210 {
        f.handle(fixture::fork(SEC + 2 * MS, 200, child, "make"));
    }
    let tag = guard_common::auto_tag(200, SEC + 3 * MS);
    f.handle(crate::kernel::decode::Event::Condemned(
        crate::kernel::decode::Condemned {
            boot_ns: SEC + 3 * MS,
            tag,
            root_tgid: Some(200),
            births: 150,
            growth: 60,
            window_ns: SEC,
            forker_tgid: 205,
            signal: libc::SIGKILL,
            deep_births: 100,
        },
    ));
    assert!(f.pipe.check(SEC + 4 * MS).expect("check").is_empty());
    assert!(f.alerts().is_empty());
    assert_eq!(*f.system.released.lock().expect("lock"), [tag]);
}

/// Kill opted into by namespace under a `log` default (the DaemonSet's
/// shape): the probe, which kills (the strongest action asked for), leaves
/// the pods' root alone, and a pod of a `kill` namespace, seen after the
/// start, gets the probe's own action back in its `SCOPE` entry; a pod of
/// another namespace, or one below a `--protect`ed cgroup, gets none.
#[test]
fn a_kill_namespace_pod_seen_later_gets_the_probes_action_under_a_log_default() {
    use crate::host::kube::{PodName, PodNames};
    use guard_common::{SCOPE_IN, SCOPE_PROTECTED};
    use std::sync::Arc;
    const A: &str = "8f3c5d1e-2b4a-4c6d-9e8f-0a1b2c3d4e5f";
    const B: &str = "1f3c5d1e-2b4a-4c6d-9e8f-0a1b2c3d4e5f";
    let pods = PodNames::known([
        (
            A.to_owned(),
            PodName {
                namespace: "batch-7".into(),
                name: "job-x".into(),
            },
        ),
        (
            B.to_owned(),
            PodName {
                namespace: "web".into(),
                name: "front".into(),
            },
        ),
    ]);
    let s = kill_batch_namespaces_under_log(Arc::new(pods));
    assert_eq!(s.strongest_fork_action(), ActionKind::Kill);
    let mut f = fixture(s);
    f.pipe.exempted(
        &["/k".to_owned()],
        &[("/k".to_owned(), SCOPE_PROTECTED)],
        &["/k/held".to_owned()],
    );
    let pod = |uid: &str, under: &str| format!("{under}/kubepods/burstable/pod{uid}/c1");
    for dir in [pod(A, "/k"), pod(B, "/k"), pod(A, "/k/held"), pod(A, "/k")] {
        f.pipe.exempt_cgroup_if_ignored(&Arc::from(dir.as_str()));
    }
    assert_eq!(
        *f.system.exempt_cgroups.lock().expect("lock"),
        [(pod(A, "/k"), SCOPE_IN)],
        "only the kill namespace's pod, once"
    );
}

#[test]
fn a_pod_first_seen_without_its_name_is_judged_once_kubelet_names_it() {
    use crate::host::kube::{PodName, PodNames};
    use guard_common::{SCOPE_IN, SCOPE_PROTECTED};
    use std::sync::Arc;
    const A: &str = "2a3c5d1e-2b4a-4c6d-9e8f-0a1b2c3d4e5f";
    let pods = Arc::new(PodNames::known([]));
    let mut f = fixture(kill_batch_namespaces_under_log(pods.clone()));
    f.pipe.exempted(
        &["/k".to_owned()],
        &[("/k".to_owned(), SCOPE_PROTECTED)],
        &[],
    );
    let dir: Arc<str> = Arc::from(format!("/k/kubepods/besteffort/pod{A}/c1").as_str());
    f.pipe.exempt_cgroup_if_ignored(&dir);
    assert!(
        f.system.exempt_cgroups.lock().expect("lock").is_empty(),
        "an unnamed pod keeps its parent's verdict"
    );
    pods.learn(
        A,
        PodName {
            namespace: "batch-3".into(),
            name: "job".into(),
        },
    );
    f.pipe.exempt_cgroup_if_ignored(&dir);
    f.pipe.exempt_cgroup_if_ignored(&dir);
    assert_eq!(
        *f.system.exempt_cgroups.lock().expect("lock"),
        [(dir.to_string(), SCOPE_IN)],
        "judged once its namespace is known, and only once"
    );
}

/// Settings of a node whose default is `log` and whose `batch-*`
/// namespaces are opted into `kill`, with the fork probe judging.
fn kill_batch_namespaces_under_log(
    pods: std::sync::Arc<crate::host::kube::PodNames>,
) -> crate::pipeline::Settings {
    use crate::respond::policy::{CgroupPolicy, Policies};
    let mut s = fixture::settings();
    s.kernel_tags = true;
    s.fork_action = ActionKind::Log;
    s.policies = Policies::new(vec![CgroupPolicy {
        namespace: Some("batch-*".into()),
        fork_action: Some(ActionKind::Kill),
        ..Default::default()
    }])
    .expect("a valid policy")
    .with_pods(pods);
    s
}
