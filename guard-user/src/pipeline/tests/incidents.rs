//! Incidents through the pipeline: one runaway's alert, actions and
//! `resolved` share an id; repeated verdicts write nothing new; every
//! detector's incident ends with a `resolved` record.

use serde_json::Value;

use crate::{
    detect::{
        crashloop::{CrashLoopDetector, CrashLoopRules},
        switches::Ignore,
    },
    kernel::decode::ExitStatus,
    pipeline::{
        crashloop::CrashLoopWatch,
        fixture::{self, *},
    },
};

fn of_kind<'a>(records: &'a [Value], kind: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["kind"] == kind).collect()
}

/// A bash bomb rooted at 100 that goes on for `secs` seconds: every 5 ms
/// the 40 newest members each fork a copy of themselves (nobody exits).
/// Returns the requests of the checks and the members.
fn long_bomb(f: &mut Fixture, secs: u64) -> (Vec<crate::pipeline::ActionRequest>, Vec<u32>) {
    let mut members = vec![100u32];
    let mut next = 1000u32;
    let mut requests = Vec::new();
    for round in 1..=(secs * 200) {
        let t = SEC + round * 5 * MS;
        let newest: Vec<u32> = members.iter().rev().take(40).copied().collect();
        for parent in newest {
            f.handle(fixture::fork(t, parent, next, "bash"));
            members.push(next);
            next += 1;
        }
        requests.extend(f.pipe.check(t).expect("check"));
    }
    (requests, members)
}

#[test]
fn a_killed_bomb_is_one_incident_from_alert_to_resolved() {
    let mut f = Fixture::new(fixture::killing(), Vec::new(), &[(100, 1, "bash")], &[]);
    let (requests, members) = long_bomb(&mut f, 3);
    let request = requests.first().expect("a kill");
    let records = f.records();
    let alerts = of_kind(&records, "alert");
    assert_eq!(alerts.len(), 1, "one bomb, one alert: {alerts:#?}");
    let id = alerts[0]["incident"]
        .as_str()
        .expect("an incident id")
        .to_owned();
    assert_eq!(alerts[0]["severity"], "critical");
    assert_eq!(alerts[0]["update"], false);
    assert_eq!(request.incident.as_deref(), Some(id.as_str()));

    let end = SEC + 3 * SEC;
    for &pid in members.iter().rev() {
        f.handle(fixture::exit(
            end + MS,
            pid,
            1,
            ExitStatus::Signaled {
                signal: 9,
                core_dumped: false,
            },
            "bash",
        ));
    }
    // The members died of the kill before it was reported.
    let follow_ups = f
        .pipe
        .action_done(request, &outcome(request.members.len()), end + MS)
        .expect("done");
    assert!(follow_ups.is_empty(), "{follow_ups:?}");
    f.pipe.check(end + 2 * MS).expect("check");
    let records = f.records();
    let action = of_kind(&records, "action");
    assert_eq!(action[0]["incident"], id.as_str(), "{:#?}", action[0]);
    let resolved = of_kind(&records, "resolved");
    assert_eq!(resolved.len(), 1, "{records:#?}");
    let r = resolved[0];
    assert_eq!(r["incident"], id.as_str());
    assert_eq!(
        (r["detector"].as_str(), r["rule"].as_str()),
        (Some("fork"), Some("explosion"))
    );
    assert_eq!(
        (r["ended"].as_str(), r["actions"].as_u64()),
        (Some("contained"), Some(1))
    );
    assert_eq!(r["offender_pid"], 100);
    assert!(r["host"].is_string(), "{r}");
}

#[test]
fn a_log_only_bomb_repeats_into_its_incident_and_then_subsides() {
    let mut f = Fixture::new(fixture::settings(), Vec::new(), &[(100, 1, "bash")], &[]);
    let (requests, _) = long_bomb(&mut f, 4);
    assert!(requests.is_empty());
    let records = f.records();
    let alerts = of_kind(&records, "alert");
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    let id = alerts[0]["incident"].clone();
    // Nobody is born any more; the members live on. The rule would have
    // judged it again within 10 s: after twice that, it has subsided.
    let quiet_from = SEC + 4 * SEC;
    f.pipe.check(quiet_from + 10 * SEC).expect("check");
    assert!(of_kind(&f.records(), "resolved").is_empty(), "not yet");
    f.pipe.check(quiet_from + 22 * SEC).expect("check");
    let records = f.records();
    let resolved = of_kind(&records, "resolved");
    assert_eq!(resolved.len(), 1, "{records:#?}");
    assert_eq!(resolved[0]["incident"], id);
    assert_eq!(resolved[0]["ended"], "subsided");
    assert_eq!(resolved[0]["alerts"], 1);
    assert!(
        resolved[0]["repeats"].as_u64() >= Some(2),
        "the rule judged it again each window: {}",
        resolved[0]
    );
}

#[test]
fn a_crash_loop_is_told_early_updated_once_sustained_and_ends_with_the_agent() {
    let mut settings = fixture::settings();
    settings.crashloop_action = crate::respond::policy::ActionKind::Stop;
    let plugin = CrashLoopWatch::new(CrashLoopDetector::new(
        CrashLoopRules {
            sustained_count: 30,
            sustained_ns: 0,
            ..CrashLoopRules::default()
        },
        Ignore::default(),
    ));
    let mut f = Fixture::new(
        settings,
        vec![Box::new(plugin)],
        &[(100, 1, "supervisor")],
        &[],
    );
    let mut requests = Vec::new();
    for i in 0..60u32 {
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
        requests.extend(f.pipe.check(t + 90 * MS).expect("check"));
    }
    let records = f.records();
    let alerts = of_kind(&records, "alert");
    assert_eq!(alerts.len(), 2, "early and sustained: {alerts:#?}");
    assert_eq!(alerts[0]["incident"], alerts[1]["incident"]);
    assert_eq!(
        (
            alerts[0]["severity"].as_str(),
            alerts[0]["update"].as_bool()
        ),
        (Some("warning"), Some(false))
    );
    assert_eq!(
        (
            alerts[1]["severity"].as_str(),
            alerts[1]["update"].as_bool()
        ),
        (Some("critical"), Some(true))
    );
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(
        requests[0].incident.as_deref(),
        alerts[0]["incident"].as_str()
    );
    f.pipe.close_incidents(10 * SEC).expect("stop");
    let records = f.records();
    let resolved = of_kind(&records, "resolved");
    assert_eq!(resolved.len(), 1, "{records:#?}");
    assert_eq!(resolved[0]["incident"], alerts[0]["incident"]);
    assert_eq!(resolved[0]["ended"], "agent_stopped");
    assert_eq!(resolved[0]["severity"], "critical");
    assert_eq!(resolved[0]["offender_pid"], 100);
}

#[test]
fn a_second_bomb_after_the_first_is_another_incident() {
    let mut f = Fixture::new(
        fixture::killing(),
        Vec::new(),
        &[(100, 1, "bash"), (200, 1, "bash")],
        &[],
    );
    let (requests, members) = long_bomb(&mut f, 2);
    let request = requests.first().expect("a kill");
    let end = 3 * SEC;
    for &pid in &members {
        let killed = ExitStatus::Signaled {
            signal: 9,
            core_dumped: false,
        };
        f.handle(fixture::exit(end + MS, pid, 1, killed, "bash"));
    }
    f.pipe
        .action_done(request, &outcome(request.members.len()), end + MS)
        .expect("done");
    // The same shape again from 200, a few seconds later.
    let mut tree = vec![200u32];
    let mut next = 100_000u32;
    let mut second = Vec::new();
    for round in 1..=400u64 {
        let t = 10 * SEC + round * 5 * MS;
        let newest: Vec<u32> = tree.iter().rev().take(40).copied().collect();
        for parent in newest {
            f.handle(fixture::fork(t, parent, next, "bash"));
            tree.push(next);
            next += 1;
        }
        second.extend(f.pipe.check(t).expect("check"));
    }
    let records = f.records();
    let alerts = of_kind(&records, "alert");
    let told: Vec<(&Value, &Value)> = alerts
        .iter()
        .map(|a| (&a["incident"], &a["offender"]["pid"]))
        .collect();
    assert_eq!(told.len(), 2, "{told:?}");
    assert_ne!(told[0].0, told[1].0, "{told:?}");
    assert_eq!(
        (told[0].1, told[1].1),
        (&Value::from(100), &Value::from(200))
    );
    let resolved = of_kind(&records, "resolved");
    assert_eq!(resolved.len(), 1, "the first ended: {records:#?}");
    assert_eq!(&resolved[0]["incident"], told[0].0);
    assert_eq!(
        second[0].incident.as_ref(),
        told[1].0.as_str().map(str::to_owned).as_ref()
    );
}
