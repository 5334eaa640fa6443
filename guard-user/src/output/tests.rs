use super::*;
use crate::{
    kernel::decode::{Exit, Fork, OomKill},
    output::{record, text::hex_of},
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

/// A crash-loop alert about `program`.
fn crash_alert(program: &str) -> record::Alert {
    record::Alert::CrashLoop(record::CrashLoopAlert {
        detector: crate::detect::switches::Detector::Crashloop,
        rule: record::Rule::CrashLoop,
        program: program.to_owned(),
        cgroup: None,
        unit: None,
        supervisor: record::Supervisor {
            comm: Some("sh".into()),
            pid: 1,
        },
        crashes: 5,
        window_secs: 60,
        per_minute: 5.0,
        loop_crashes: 5,
        loop_secs: 60.0,
        busy: 0.9,
        sustained: false,
        statuses: vec!["exit 1".into()],
        last_pid: 2,
        action: crate::respond::policy::ActionKind::Log,
        not_stopped_because: None,
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

/// Process 2 forked by 1, with these names.
fn fork_of(parent_comm: Comm, child_comm: Comm) -> Event {
    Event::Fork(Fork {
        boot_ns: 1,
        parent_pid: 1,
        parent_tgid: 1,
        child_pid: 2,
        child_tgid: 2,
        child_ppid: 1,
        kernel_thread: false,
        child_cgroup_id: 0,
        parent_comm,
        child_comm,
    })
}

#[test]
fn json_escapes_strings() {
    let fork = fork_of(
        Comm::from_str_lossy("a\"b\\c"),
        Comm::from_str_lossy("tab\there"),
    );
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
    Event::Exec(crate::kernel::decode::Exec {
        boot_ns: 1,
        pid: 9,
        tgid: 9,
        old_pid: 9,
        comm: Comm::new(*b"\x1b]0;x\x07\nFORGED\xff\0\0"),
        filename: (*b"/tmp/a\nFORGED 00:00:00 exit\x1b[2J\xfe").into(),
        filename_truncated: false,
        cmdline: Some(crate::kernel::decode::Args::of(&[b"a b", b"", b"\xff\x1b"])),
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
    out.record(&crash_alert("/x\n# summary\x07").told("t-1", false))
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
    out.record(&crash_alert("/bin/false").told("t-1", false))
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
    out.record(&crash_alert("/bin/false").told("t-1", false))
        .expect("write");
    assert_eq!((out.dropped, out.records_dropped), (1, 1));
    backlog.store(0, Ordering::Relaxed);
    out.settle(Err(io::ErrorKind::BrokenPipe.into()))
        .expect("kept, not returned");
    assert_eq!(
        out.failure().map(io::Error::kind),
        Some(io::ErrorKind::BrokenPipe)
    );
    out.record(&crash_alert("/bin/false").told("t-1", false))
        .expect("counted, not an error");
    out.event(&exit(ExitStatus::Exited(0)), &ctx())
        .expect("counted, not an error");
    out.flush().expect("nothing to flush");
    assert_eq!((out.dropped, out.records_dropped), (2, 2));
    assert!(out.into_inner().is_empty());
}

#[test]
fn records_in_both_formats() {
    let mut out = Output::new(Vec::new(), Format::Json, clock());
    let lost = record::Lost {
        ring_full: [("fork".to_owned(), 3)].into(),
        read_failed: Default::default(),
        queue_full: 0,
        blocked_untracked: 0,
    };
    out.record(&lost).expect("write");
    let v: serde_json::Value = serde_json::from_slice(&out.into_inner()).expect("json");
    assert_eq!(
        (v["kind"].as_str(), v["ring_full"]["fork"].as_u64()),
        (Some("lost"), Some(3))
    );
    let mut out = Output::new(Vec::new(), Format::Text { color: false }, clock());
    out.record(&lost).expect("write");
    assert_eq!(
        String::from_utf8(out.into_inner()).expect("utf8"),
        "# lost: ring_full={\"fork\":3} read_failed={} queue_full=0 blocked_untracked=0\n"
    );
    // Alerts and actions are counted by their typed labels.
    let mut out = Output::new(Vec::new(), Format::Json, clock());
    out.record(&crash_alert("/bin/false").told("t-1", false))
        .expect("write");
    out.record(&crash_alert("/bin/false").told("t-1", false))
        .expect("write");
    assert_eq!(
        out.tally.alerts.get(&(
            crate::detect::switches::Detector::Crashloop,
            record::Rule::CrashLoop
        )),
        Some(&2)
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

mod schema_checks {
    //! The generated schema against what the writers write: the event fast
    //! path for every kind (with and without context, in a pod, with names
    //! that are not UTF-8), and a record of every type.

    use super::*;
    use crate::{
        kernel::decode::{CgroupAttach, Condemned, HungTask, ReclaimStall, Rss, Unblocked},
        output::{
            record::{self, Alert, Blame, Offender, Process, Rule},
            schema,
        },
        respond::policy::ActionKind,
    };

    fn validator() -> jsonschema::Validator {
        jsonschema::validator_for(&schema::document()).expect("the generated schema compiles")
    }

    fn check(validator: &jsonschema::Validator, what: &str, value: &serde_json::Value) {
        let errors: Vec<String> = validator
            .iter_errors(value)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .take(3)
            .collect();
        assert!(errors.is_empty(), "{what}: {value}\n{errors:#?}");
    }

    const POD: &str = "/sys/fs/cgroup/kubepods.slice/kubepods-burstable.slice/\
        kubepods-burstable-pod0a1b2c3d_0000_4000_8000_123456789abc.slice/\
        cri-containerd-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.scope";

    fn every_event() -> Vec<Event> {
        let comm = Comm::new(*b"w\xffrker\0\0\0\0\0\0\0\0\0\0");
        vec![
            fork_of(comm, comm),
            hostile_exec(),
            exit(ExitStatus::Exited(3)),
            exit(ExitStatus::Signaled {
                signal: 9,
                core_dumped: true,
            }),
            Event::OomKill(OomKill {
                boot_ns: 1,
                pid: 5,
                comm: None,
                uid: Some(0),
                trigger_pid: 6,
                trigger_tgid: 6,
                total_vm_kb: Some(1),
                anon_rss_kb: None,
                file_rss_kb: Some(2),
                shmem_rss_kb: None,
                pgtables_kb: Some(3),
                oom_score_adj: Some(-1000),
            }),
            Event::HungTask(HungTask {
                boot_ns: 1,
                pid: 7,
                tgid: 7,
                comm,
            }),
            Event::CgroupAttach(CgroupAttach {
                boot_ns: 1,
                pid: 8,
                tgid: 8,
                ppid: 1,
                comm,
                kernel_thread: false,
                start_ns: 0,
                hierarchy_id: 3,
                path: crate::host::cgroup::path_text(b"/moved/\xfe"),
            }),
            Event::Unblocked(Unblocked {
                boot_ns: 1,
                pid: 9,
                tgid: 9,
                killable: true,
                since_ns: 1,
                blocked_ns: 2,
                comm,
            }),
            Event::Rss(Rss {
                boot_ns: 1,
                pid: 10,
                tgid: 10,
                step: 4,
                previous_step: None,
                file_bytes: 1,
                anon_bytes: 2,
                shmem_bytes: 3,
                swap_bytes: 4,
                comm,
            }),
            Event::ReclaimStall(ReclaimStall {
                boot_ns: 1,
                pid: 11,
                tgid: 11,
                stall_ns: 5_000_000,
                nr_reclaimed: 7,
                comm,
            }),
            Event::Condemned(Condemned {
                boot_ns: 1,
                tag: 77,
                root_tgid: None,
                births: 300,
                growth: 120,
                window_ns: 1_000_000_000,
                forker_tgid: 12,
                signal: 9,
                deep_births: 250,
            }),
        ]
    }

    #[test]
    fn the_event_writer_writes_what_the_event_types_describe() {
        let validator = validator();
        let raw = crate::host::cgroup::path_text(b"/sys/fs/cgroup/pids/\xff\xfe");
        let contexts = [
            ctx(),
            Context::default(),
            Context {
                cgroup: Some(POD),
                lead_ns: Some(3),
                memory_cgroup: Some(POD),
                ..ctx()
            },
            Context {
                cgroup: Some(&raw),
                comm: Some(Comm::new(*b"\xff\xfe\0\0\0\0\0\0\0\0\0\0\0\0\0\0")),
                ..ctx()
            },
        ];
        let mut kinds = std::collections::BTreeSet::new();
        for event in every_event() {
            kinds.insert(event.kind());
            for ctx in &contexts {
                check(&validator, "event", &json_line(&event, ctx));
            }
        }
        assert_eq!(kinds.len(), EventKind::ALL.len(), "a kind is not tried");
        // A pod's fields are there, and a raw name has its twin.
        let pod = json_line(&every_event()[0], &contexts[2]);
        assert_eq!(pod["qos"], "Burstable", "{pod}");
        let twin = json_line(&every_event()[0], &contexts[3]);
        assert_eq!(
            twin["cgroup_hex"].as_str().map(|h| h.ends_with("fffe")),
            Some(true)
        );
    }

    /// The names code uses (metrics labels, hook variables) are the names
    /// the records write.
    #[test]
    fn names_are_the_serialized_names() {
        use crate::{detect::switches::Detector, respond::policy::ActionKind};
        let named = |value: serde_json::Value, name: &str| {
            assert_eq!(value, serde_json::Value::from(name));
        };
        for rule in [
            Rule::Explosion,
            Rule::PidsLimitTrend,
            Rule::PidsLimitRush,
            Rule::Leak,
            Rule::CrashLoop,
            Rule::MemoryLimitTrend,
            Rule::MemoryHeadroom,
            Rule::MemoryPressure,
            Rule::BlockedStorm,
        ] {
            named(serde_json::to_value(rule).expect("rule"), rule.name());
        }
        for d in Detector::ALL {
            named(serde_json::to_value(d).expect("detector"), d.name());
        }
        for a in [ActionKind::Log, ActionKind::Stop, ActionKind::Kill] {
            named(serde_json::to_value(a).expect("action"), a.name());
        }
    }

    #[test]
    fn what_the_schema_refuses() {
        let validator = validator();
        let mut line = json_line(&exit(ExitStatus::Exited(1)), &ctx());
        check(&validator, "exit", &line);
        for (what, mutate) in [
            (
                "a stray field",
                &(|v: &mut serde_json::Value| v["surprise"] = 1.into())
                    as &dyn Fn(&mut serde_json::Value),
            ),
            ("a missing field", &|v: &mut serde_json::Value| {
                v.as_object_mut().map(|o| o.remove("exit_code"));
            }),
            ("an unknown kind", &|v: &mut serde_json::Value| {
                v["kind"] = "teleport".into()
            }),
            ("a twin that is not hex", &|v: &mut serde_json::Value| {
                v["comm_hex"] = "zz".into()
            }),
        ] {
            let mut bad = line.clone();
            mutate(&mut bad);
            assert!(!validator.is_valid(&bad), "{what} passed: {bad}");
        }
        line["comm_hex"] = "ff".into();
        check(&validator, "a hex twin", &line);
    }

    fn process() -> Process {
        Process {
            alive: true,
            cgroup: Some(crate::host::cgroup::path_text(
                b"/sys/fs/cgroup/pids/\xffci",
            )),
            cmdline: Some(vec!["bash".into()]),
            comm: "bash".into(),
            comm_hex: None,
            exe: Some("/usr/bin/bash".into()),
            not_spared_because: Some("not the trusted sshd".into()),
            pid: 42,
            subtree_size: Some(3),
            memory_cgroup: None,
            pod: record::PodFields::of(POD, &crate::host::kube::PodNames::none(), 0),
            growth: Some(record::Growth {
                growth_bytes: 1,
                resident_bytes: 2,
                share: Some(record::Share {
                    baseline_secs: None,
                    share_of_growth: 0.5,
                }),
            }),
        }
    }

    fn records_of<R: record::Record>(record: &R) -> Vec<serde_json::Value> {
        let mut out = Output::new(Vec::new(), Format::Json, clock());
        out.record(record).expect("write");
        String::from_utf8(out.into_inner())
            .expect("utf8")
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON"))
            .collect()
    }

    #[test]
    fn records_of_every_type_match_the_schema_with_their_twins() {
        let validator = validator();
        let blame = Blame::on(Some(Offender::Known(Box::new(process()))), ActionKind::Kill);
        let alert = Alert::Explosion(record::ExplosionAlert {
            detector: crate::detect::switches::Detector::Fork,
            rule: Rule::Explosion,
            cgroup: None,
            births: 1,
            births_per_sec: 2.0,
            growth: 3,
            deep_births: 4,
            live: None,
            window_ms: 1000,
            condemned_by_kernel: true,
            blame: blame.clone(),
        });
        let lines = records_of(&alert.told("t-1", false));
        check(&validator, "alert", &lines[0]);
        assert!(
            lines[0]["offender"]["cgroup_hex"].is_string(),
            "the nested raw name has its twin: {}",
            lines[0]
        );
        let storm = Alert::BlockedStorm(record::StormAlert {
            detector: crate::detect::switches::Detector::Blocked,
            rule: Rule::BlockedStorm,
            count: 3,
            killable: 0,
            threshold_secs: 5.0,
            longest_ms: 9000,
            shared_wait: None,
            memory_pressure: record::StormPressure {
                psi: None,
                reasons: vec![],
            },
            pids: vec![1, 2],
            blame: Blame::nobody("nobody grew"),
        });
        check(
            &validator,
            "storm",
            &records_of(&storm.told("t-2", true))[0],
        );
        let gone = record::ActionRecord::DryRun(record::ActionDryRun {
            head: record::ActionHead {
                incident: Some("t-1".into()),
                detector: crate::detect::switches::Detector::Fork,
                rule: Rule::Explosion,
                action: ActionKind::Stop,
                dry_run: true,
                offender: Some(Offender::Gone {
                    note: "gone before guard knew it".into(),
                    pid: None,
                }),
            },
            members: vec![4, 5],
        });
        check(&validator, "dry run", &records_of(&gone)[0]);
        let seen = record::UnblockedSeen {
            pid: 1,
            since_ns: 2,
            blocked_ms: 3,
            killable: false,
            approximate: true,
        };
        check(&validator, "unblocked, seen", &records_of(&seen)[0]);
    }

    /// The repository's copies are what the types give: after changing a
    /// record type, run `cargo xtask schema`.
    #[test]
    fn the_checked_in_schema_and_field_reference_are_current() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for (file, generated) in [
            ("schema/guard.schema.json", schema::text()),
            ("docs/schema-fields.md", schema::markdown()),
        ] {
            let kept = std::fs::read_to_string(root.join(file)).unwrap_or_default();
            assert!(
                kept == generated,
                "{file} is not what the record types give: run `cargo xtask schema` and commit it"
            );
        }
    }
}

#[test]
fn over_the_cpu_limit_stream_events_are_shed_and_an_oom_kill_is_not() {
    let oom = Event::OomKill(OomKill {
        boot_ns: 5,
        pid: 9,
        comm: None,
        uid: None,
        trigger_pid: 9,
        trigger_tgid: 9,
        total_vm_kb: None,
        anon_rss_kb: None,
        file_rss_kb: None,
        shmem_rss_kb: None,
        pgtables_kb: None,
        oom_score_adj: None,
    });
    let backlog = Arc::new(AtomicUsize::new(EVENT_BACKLOG + 1));
    let mut out = Output::new(Vec::new(), Format::Json, clock()).with_backlog(backlog);
    out.set_shedding(true);
    out.event(&exit(ExitStatus::Exited(0)), &ctx())
        .expect("write");
    out.event(&oom, &ctx()).expect("write");
    assert_eq!((out.shed, out.dropped), (1, 0));
    assert!(
        out.records_unflushed,
        "an OOM kill is flushed like a record"
    );
    let text = String::from_utf8(out.into_inner()).expect("utf8");
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("\"kind\":\"oom_kill\""), "{text}");
}
