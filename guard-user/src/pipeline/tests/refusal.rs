//! Refusals through the glue (`pipeline::refusal`), on the recording fake
//! system: a `refuse` verdict, the refusal watched and reported, the
//! ladder's next step, a lift, and the fallback where the kernel cannot
//! refuse.

use guard_common::Refusal;

use crate::{
    pipeline::fixture::{self, *},
    respond::{act::Outcome, policy::ActionKind, refusal::Ended},
};

fn fixture(settings: crate::pipeline::Settings) -> Fixture {
    Fixture::new(settings, Vec::new(), &[(100, 1, "bash")], &[])
}

fn refusing(action: ActionKind) -> crate::pipeline::Settings {
    let mut s = fixture::settings();
    s.fork_action = action;
    s.refusal.grace_ns = 2 * SEC;
    s
}

/// What `contain` reports for a refusal in force.
fn refused_outcome() -> Outcome {
    Outcome {
        signalled: 0,
        died: 0,
        contained: false,
        refusing: true,
        refused_forks: Some(0),
        slipped_forks: Some(0),
        ..outcome(0)
    }
}

fn set_count(f: &Fixture, tag: u64, refused: u64, last_ns: u64) {
    f.system.refusals.lock().expect("lock").insert(
        tag,
        Refusal {
            refused,
            last_ns,
            slipped: 0,
        },
    );
}

fn refusal_records(f: &mut Fixture) -> Vec<serde_json::Value> {
    f.records()
        .into_iter()
        .filter(|r| r["kind"] == "refusal")
        .collect()
}

#[test]
fn a_refused_bomb_is_watched_and_a_ladder_kills_it_once_the_grace_is_over() {
    let mut f = fixture(refusing(ActionKind::RefuseThenKill));
    let (requests, _) = bomb(&mut f, 9);
    let request = requests.first().expect("a verdict").clone();
    assert_eq!(request.kind, ActionKind::RefuseThenKill);
    let tag = request.tag;
    set_count(&f, tag, 0, 0);
    let t0 = 2 * SEC;
    let follow_ups = f
        .pipe
        .action_done(&request, &refused_outcome(), t0)
        .expect("reported");
    assert!(
        follow_ups.is_empty(),
        "every member was tagged: {follow_ups:?}"
    );
    let action = f
        .records()
        .into_iter()
        .find(|r| r["kind"] == "action")
        .expect("the action record");
    assert_eq!(action["action"], "refuse-then-kill", "{action}");
    assert!(action["signals"].is_null(), "{action}");

    // A second later: 300 forks refused.
    set_count(&f, tag, 300, t0 + SEC - MS);
    assert!(f.pipe.watch_refusals(t0 + SEC).expect("watch").is_empty());
    let trying = refusal_records(&mut f);
    assert_eq!(trying.len(), 1, "{trying:?}");
    assert_eq!(trying[0]["state"], "trying");
    assert_eq!(trying[0]["refused"], 300);
    assert_eq!(trying[0]["per_second"], 300.0);
    assert_eq!(trying[0]["offender"]["pid"], 100, "{}", trying[0]);

    // Still trying when the grace is over: the next step, a kill of the
    // same subtree; the refusal stays until that kill releases it.
    set_count(&f, tag, 700, t0 + 2 * SEC - 10 * MS);
    let steps = f.pipe.watch_refusals(t0 + 2 * SEC).expect("watch");
    assert_eq!(steps.len(), 1);
    assert_eq!((steps[0].kind, steps[0].tag), (ActionKind::Kill, tag));
    let ended = refusal_records(&mut f);
    assert_eq!(ended[0]["state"], "ended");
    assert_eq!(ended[0]["ended"], "escalated");
    assert_eq!(ended[0]["then"], "kill");
    assert!(f.system.lifted.lock().expect("lock").is_empty());
}

#[test]
fn a_lifted_refusal_ends_with_a_record_and_frees_the_kernel_entry() {
    let mut f = fixture(refusing(ActionKind::Refuse));
    let (requests, _) = bomb(&mut f, 9);
    let request = requests.first().expect("a verdict").clone();
    set_count(&f, request.tag, 0, 0);
    f.pipe
        .action_done(&request, &refused_outcome(), 2 * SEC)
        .expect("reported");
    // A plain refuse never steps up, however long the lineage tries.
    for s in 3..30 {
        set_count(&f, request.tag, 100 * s, s * SEC - MS);
        assert!(f.pipe.watch_refusals(s * SEC).expect("watch").is_empty());
    }
    assert_eq!(
        f.pipe.end_refusals(30 * SEC, Ended::Lifted).expect("lift"),
        1
    );
    let ended = refusal_records(&mut f)
        .into_iter()
        .find(|r| r["state"] == "ended")
        .expect("an end record");
    assert_eq!(ended["ended"], "lifted", "{ended}");
    assert_eq!(*f.system.lifted.lock().expect("lock"), [request.tag]);
    assert!(f.system.refusals.lock().expect("lock").is_empty());
}

#[test]
fn where_the_kernel_cannot_refuse_a_ladder_starts_at_its_next_rung() {
    let mut settings = refusing(ActionKind::RefuseThenStop);
    settings.refusal_available = false;
    let mut f = fixture(settings);
    let (requests, _) = bomb(&mut f, 9);
    assert_eq!(requests.first().map(|r| r.kind), Some(ActionKind::Stop));

    let mut settings = refusing(ActionKind::Refuse);
    settings.refusal_available = false;
    let mut f = fixture(settings);
    let (requests, _) = bomb(&mut f, 9);
    assert!(
        requests.is_empty(),
        "a plain refuse only alerts: {requests:?}"
    );
    assert_eq!(f.alerts()[0]["action"], "log");
}
