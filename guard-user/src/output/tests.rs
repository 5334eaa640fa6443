use super::*;
use crate::{
    decode::{Exit, Fork, OomKill},
    output::text::hex_of,
};

fn clock() -> WallClock {
    // Boot at 2026-11-22T00:00:00Z.
    WallClock::fixed(1_795_305_600 * 1_000_000_000)
}

fn exit(status: ExitStatus) -> Event {
    Event::Exit(Exit {
        boot_ns: 3_000_000_123,
        pid: 42,
        tgid: 42,
        ppid: 7,
        status,
        group_dead: true,
        kernel_thread: false,
        comm: Comm::from_str_lossy("crashy"),
    })
}

fn ctx() -> Context<'static> {
    Context {
        comm: None,
        ppid: Some(7),
        parent_comm: Some(Comm::from_str_lossy("supervisor")),
        cgroup: Some("/sys/fs/cgroup/pids/svc"),
        age_ns: Some(50_000_000),
        lead_ns: None,
        memory_cgroup: None,
    }
}

fn json_line(event: &Event, ctx: &Context<'_>) -> serde_json::Value {
    let mut out = Output::new(Vec::new(), Format::Json, clock());
    out.event(event, ctx).expect("write");
    let text = String::from_utf8(out.into_inner()).expect("utf8");
    assert!(
        text.ends_with('\n') && text.matches('\n').count() == 1,
        "one line: {text:?}"
    );
    serde_json::from_str(&text).expect("valid JSON")
}

#[test]
fn json_exit_with_code() {
    let v = json_line(&exit(ExitStatus::Exited(3)), &ctx());
    assert_eq!(v["kind"], "exit");
    assert_eq!(v["time"], "2026-11-22T00:00:03.000000123Z");
    assert_eq!(v["boot_ns"], 3_000_000_123u64);
    assert_eq!((v["pid"].as_u64(), v["ppid"].as_u64()), (Some(42), Some(7)));
    assert_eq!(
        (v["comm"].as_str(), v["parent_comm"].as_str()),
        (Some("crashy"), Some("supervisor"))
    );
    assert_eq!(v["cgroup"], "/sys/fs/cgroup/pids/svc");
    assert_eq!(
        (v["exit_code"].as_i64(), v["signal"].is_null()),
        (Some(3), true)
    );
    assert_eq!(v["age_ns"], 50_000_000u64);
}

#[test]
fn json_exit_by_signal_and_unknown_context() {
    let v = json_line(
        &exit(ExitStatus::Signaled {
            signal: 9,
            core_dumped: false,
        }),
        &Context::default(),
    );
    assert!(v["exit_code"].is_null());
    assert_eq!(v["signal"], "SIGKILL");
    assert!(v["ppid"].is_null() && v["cgroup"].is_null() && v["parent_comm"].is_null());
}

#[test]
fn json_escapes_strings() {
    let fork = Event::Fork(Fork {
        boot_ns: 1,
        parent_pid: 1,
        parent_tgid: 1,
        child_pid: 2,
        child_tgid: 2,
        child_ppid: 1,
        kernel_thread: false,
        child_cgroup_id: 0,
        parent_comm: Comm::from_str_lossy("a\"b\\c"),
        child_comm: Comm::from_str_lossy("tab\there"),
    });
    let v = json_line(
        &fork,
        &Context {
            cgroup: Some("/x/\"q\""),
            ..ctx()
        },
    );
    assert_eq!(v["comm"], "tab\there");
    assert_eq!(v["cgroup"], "/x/\"q\"");
    assert_eq!(v["thread"], false);
}

fn hostile_exec() -> Event {
    Event::Exec(crate::decode::Exec {
        boot_ns: 1,
        pid: 9,
        tgid: 9,
        old_pid: 9,
        comm: Comm::new(*b"\x1b]0;x\x07\nFORGED\xff\0\0"),
        filename: (*b"/tmp/a\nFORGED 00:00:00 exit\x1b[2J\xfe").into(),
        filename_truncated: false,
        cmdline: Some(crate::decode::Args::of(&[b"a b", b"", b"\xff\x1b"])),
        cmdline_truncated: false,
    })
}

#[test]
fn text_escapes_every_control_byte_and_stays_on_one_line() {
    let mut out = Output::new(Vec::new(), Format::Text { color: false }, clock());
    let ctx = Context {
        cgroup: Some("/cg/\n\x1b[2J"),
        ..ctx()
    };
    out.event(&hostile_exec(), &ctx).expect("write");
    out.record(
        "alert",
        &[("program", serde_json::json!("/x\n# summary\x07"))],
    )
    .expect("write");
    let text = out.into_inner();
    let lines: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
    assert_eq!(lines.len(), 4, "header, event, alert, and the last newline");
    assert!(
        !text.iter().any(|&b| b < 0x20 && b != b'\n' || b == 0x7f),
        "{}",
        String::from_utf8_lossy(&text)
    );
    let event = String::from_utf8_lossy(lines[1]);
    assert!(event.contains("\\x1b]0;x\\x07\\x0aFORGED\\xff"), "{event}");
    assert!(
        event.contains("/tmp/a\\x0aFORGED 00:00:00 exit\\x1b[2J\\xfe"),
        "{event}"
    );
    assert!(String::from_utf8_lossy(lines[2]).contains("program=/x\\x0a# summary\\x07"));
}

#[test]
fn json_keeps_exact_bytes_and_arguments_apart() {
    let v = json_line(&hostile_exec(), &ctx());
    assert_eq!(v["comm_hex"], "1b5d303b78070a464f52474544ff");
    assert_eq!(
        v["filename"],
        "/tmp/a\nFORGED 00:00:00 exit\u{1b}[2J\u{fffd}"
    );
    assert_eq!(
        v["filename_hex"],
        hex_of(b"/tmp/a\nFORGED 00:00:00 exit\x1b[2J\xfe")
    );
    assert_eq!(
        v["cmdline"],
        serde_json::json!(["a b", "", "\u{fffd}\u{1b}"])
    );
    assert_eq!(v["cmdline_hex"], serde_json::json!(["612062", "", "ff1b"]));
    let plain = json_line(&exit(ExitStatus::Exited(0)), &ctx());
    assert!(plain.get("comm_hex").is_none(), "only when not UTF-8");
}

#[test]
fn json_oom_marks_absent_fields_null() {
    let oom = Event::OomKill(OomKill {
        boot_ns: 5,
        pid: 9,
        comm: None,
        uid: None,
        trigger_pid: 9,
        trigger_tgid: 9,
        total_vm_kb: None,
        anon_rss_kb: Some(65_000),
        file_rss_kb: None,
        shmem_rss_kb: None,
        pgtables_kb: None,
        oom_score_adj: Some(0),
    });
    let v = json_line(
        &oom,
        &Context {
            comm: Some(Comm::from_str_lossy("hog")),
            ..ctx()
        },
    );
    assert_eq!(v["comm"], "hog", "falls back to the process table's comm");
    assert_eq!(v["anon_rss_kb"], 65_000);
    assert!(v["total_vm_kb"].is_null());
}

#[test]
fn text_is_aligned_with_a_header_and_no_colour_off_tty() {
    let mut out = Output::new(Vec::new(), Format::Text { color: false }, clock());
    out.event(
        &exit(ExitStatus::Signaled {
            signal: 15,
            core_dumped: false,
        }),
        &ctx(),
    )
    .expect("write");
    out.event(&exit(ExitStatus::Exited(0)), &ctx())
        .expect("write");
    let text = String::from_utf8(out.into_inner()).expect("utf8");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[0].starts_with("TIME(UTC)"));
    assert!(lines[1].starts_with("00:00:03.000000  exit"));
    assert!(lines[1].contains("signal=SIGTERM age=50.0ms"));
    assert!(lines[2].contains("code=0"));
    let col = |l: &str| l.find("/sys/fs/cgroup");
    assert_eq!(col(lines[1]), col(lines[2]));
    assert!(!text.contains('\x1b'));
}

#[test]
fn events_are_dropped_and_counted_while_output_is_backlogged() {
    let backlog = Arc::new(AtomicUsize::new(EVENT_BACKLOG + 1));
    let mut out = Output::new(Vec::new(), Format::Json, clock()).with_backlog(backlog.clone());
    out.event(&exit(ExitStatus::Exited(0)), &ctx())
        .expect("write");
    out.record("alert", &[("detector", serde_json::json!("fork"))])
        .expect("write");
    assert_eq!(out.dropped, 1);
    backlog.store(0, Ordering::Relaxed);
    out.event(&exit(ExitStatus::Exited(0)), &ctx())
        .expect("write");
    let text = String::from_utf8(out.into_inner()).expect("utf8");
    assert_eq!(
        text.lines().count(),
        2,
        "the alert, and the event once the backlog cleared: {text}"
    );
    assert!(
        text.lines()
            .next()
            .is_some_and(|l| l.contains("\"kind\":\"alert\""))
    );
}

#[test]
fn past_the_ceiling_records_are_dropped_and_counted_too() {
    let backlog = Arc::new(AtomicUsize::new(RECORD_BACKLOG + 1));
    let mut out = Output::new(Vec::new(), Format::Json, clock()).with_backlog(backlog.clone());
    out.event(&exit(ExitStatus::Exited(0)), &ctx())
        .expect("write");
    out.record("alert", &[("detector", serde_json::json!("fork"))])
        .expect("write");
    assert_eq!((out.dropped, out.records_dropped), (1, 1));
    backlog.store(0, Ordering::Relaxed);
    out.settle(Err(io::ErrorKind::BrokenPipe.into()))
        .expect("kept, not returned");
    assert_eq!(
        out.failure().map(io::Error::kind),
        Some(io::ErrorKind::BrokenPipe)
    );
    out.record("action", &[]).expect("counted, not an error");
    out.event(&exit(ExitStatus::Exited(0)), &ctx())
        .expect("counted, not an error");
    out.flush().expect("nothing to flush");
    assert_eq!((out.dropped, out.records_dropped), (2, 2));
    assert!(out.into_inner().is_empty());
}

#[test]
fn records_in_both_formats() {
    let mut out = Output::new(Vec::new(), Format::Json, clock());
    out.record("summary", &[("lost", serde_json::json!(0))])
        .expect("write");
    let v: serde_json::Value = serde_json::from_slice(&out.into_inner()).expect("json");
    assert_eq!(
        (v["kind"].as_str(), v["lost"].as_u64()),
        (Some("summary"), Some(0))
    );
    let mut out = Output::new(Vec::new(), Format::Text { color: false }, clock());
    out.record("summary", &[("lost", serde_json::json!(0))])
        .expect("write");
    assert_eq!(
        String::from_utf8(out.into_inner()).expect("utf8"),
        "# summary: lost=0\n"
    );
}

/// A process in a pod: its record names the pod, the container and the
/// QoS class; elsewhere the fields are absent.
#[test]
fn json_names_the_pod_of_a_kubepods_cgroup() {
    let cgroup = "/sys/fs/cgroup/kubepods.slice/kubepods-besteffort.slice/\
                  kubepods-besteffort-pod8f3c5d1e_2b4a_4c6d_9e8f_0a1b2c3d4e5f.slice/\
                  cri-containerd-3b5a7c9d1e2f4a6b8c0d2e4f6a8b0c2d4e6f8a0b2c4d6e8f0a2b4c6d8e0f2a4b.scope";
    let in_pod = Context {
        cgroup: Some(cgroup),
        ..ctx()
    };
    let v = json_line(&exit(ExitStatus::Exited(0)), &in_pod);
    assert_eq!(v["pod_uid"], "8f3c5d1e-2b4a-4c6d-9e8f-0a1b2c3d4e5f");
    assert_eq!(
        v["container_id"],
        "3b5a7c9d1e2f4a6b8c0d2e4f6a8b0c2d4e6f8a0b2c4d6e8f0a2b4c6d8e0f2a4b"
    );
    assert_eq!(v["qos"], "BestEffort");
    let v = json_line(&exit(ExitStatus::Exited(0)), &ctx());
    assert!(v.get("pod_uid").is_none(), "{v}");
}
