//! Incident reports through the pipeline: the subtree at the request, what
//! the action thread read and signalled, the cgroup's history, the end.

use crate::{
    output::report::{Reports, TreeMember},
    pipeline::{
        ReportBook,
        fixture::{self, *},
    },
};

#[test]
fn a_report_holds_the_subtree_at_the_verdict_what_was_signalled_and_the_end() {
    let dir = TempDir::new();
    let writer = Reports::start(&dir.path().join("incidents"), 10, 1 << 20).expect("writer");
    let mut f = Fixture::new(fixture::killing(), Vec::new(), &[(100, 1, "bash")], &[])
        .map_pipe(|p| p.with_reports(ReportBook::new(writer, false)));
    let (requests, born) = bomb(&mut f, 9);
    let request = requests.first().expect("a kill").clone();
    f.pipe.report_requested(&requests, 2 * SEC);
    // The action thread read three members and signalled them, and one
    // born meanwhile (not in the table's subtree at the verdict).
    let mut outcome = fixture::outcome(4);
    outcome.signalled_pids = vec![100, born[1], born[2], 99_999];
    outcome.captured = vec![(
        100,
        crate::host::procfs::StatusDetail {
            uid: Some(1000),
            state: Some("R".into()),
            rss_bytes: Some(3 << 20),
            swap_bytes: Some(0),
        },
    )];
    f.pipe
        .action_done(&request, &outcome, 2 * SEC + 10 * MS)
        .expect("action done");
    f.pipe.close_incidents(3 * SEC).expect("close");
    f.pipe.close_reports();
    let id = request.incident.as_deref().expect("an incident");
    let report =
        crate::output::report::read(&dir.path().join("incidents"), id).expect("the report");
    assert_eq!(
        report.decision["rule"], "explosion",
        "{:?}",
        report.decision
    );
    assert_eq!(report.cgroup.as_deref(), Some(PIDS_JOBS));
    let pids: Vec<u32> = report.tree.iter().map(|m| m.pid).collect();
    assert_eq!(pids[0], 100, "the root first");
    assert!(
        born.iter().all(|p| pids.contains(p)),
        "every member born by the verdict"
    );
    let of = |pid: u32| -> &TreeMember {
        report
            .tree
            .iter()
            .find(|m| m.pid == pid)
            .unwrap_or_else(|| panic!("{pid} not in the tree"))
    };
    assert!(of(100).signalled && of(born[1]).signalled && !of(born[5]).signalled);
    assert_eq!(
        (of(100).uid, of(100).rss_bytes),
        (Some(1000), Some(3 << 20))
    );
    assert_eq!(of(born[1]).ppid, Some(100));
    assert!(
        of(99_999).joined && of(99_999).signalled,
        "born during containment"
    );
    assert_eq!(report.actions.len(), 1);
    assert_eq!(report.actions[0]["outcome"]["signalled"], 4);
    // Its members never exited here: it ended with the agent.
    assert_eq!(
        report.resolved.as_ref().map(|r| r["ended"].clone()),
        Some("agent_stopped".into())
    );
    assert!(
        report.history.iter().filter(|h| h.kind == "fork").count() >= 200,
        "the cgroup's forks"
    );
    assert!(report.per_second.iter().map(|s| s.forks).sum::<u32>() >= 200);
}

#[test]
fn with_incident_alerts_an_alert_under_log_gets_its_report_when_raised() {
    let dir = TempDir::new();
    let writer = Reports::start(&dir.path().join("incidents"), 10, 1 << 20).expect("writer");
    let mut f = Fixture::new(fixture::settings(), Vec::new(), &[(100, 1, "bash")], &[])
        .map_pipe(|p| p.with_reports(ReportBook::new(writer, true)));
    let (requests, born) = bomb(&mut f, 9);
    assert!(requests.is_empty(), "log asks for nothing");
    let alert = f
        .alerts()
        .into_iter()
        .find(|a| a["rule"] == "explosion")
        .expect("an explosion alert");
    f.pipe.close_reports();
    let id = alert["incident"].as_str().expect("an incident");
    let report =
        crate::output::report::read(&dir.path().join("incidents"), id).expect("the report");
    assert_eq!(report.decision["action"], "log");
    assert!(report.actions.is_empty());
    let pids: Vec<u32> = report.tree.iter().map(|m| m.pid).collect();
    assert_eq!(pids.first(), Some(&100), "the offender first");
    assert!(pids.len() >= 100 && pids.iter().all(|p| born.contains(p)));
    assert!(report.tree.iter().all(|m| !m.signalled));

    // Without it, an alert under log leaves no report.
    let dir = TempDir::new();
    let writer = Reports::start(&dir.path().join("incidents"), 10, 1 << 20).expect("writer");
    let mut f = Fixture::new(fixture::settings(), Vec::new(), &[(100, 1, "bash")], &[])
        .map_pipe(|p| p.with_reports(ReportBook::new(writer, false)));
    let _ = bomb(&mut f, 9);
    f.pipe.close_reports();
    let files = std::fs::read_dir(dir.path().join("incidents"))
        .expect("dir")
        .count();
    assert_eq!(files, 0);
}
