use guard_common::{ARGS_LEN, PATH_LEN};

use super::*;

pub(crate) fn bytes_of<T: Copy>(value: &T) -> Vec<u8> {
    // SAFETY: T is one of the padding-free wire structs; reading its bytes
    // is reading initialized integers.
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}

pub(crate) fn comm(s: &str) -> [u8; COMM_LEN] {
    let mut c = [0u8; COMM_LEN];
    c[..s.len()].copy_from_slice(s.as_bytes());
    c
}

fn header(kind: EventKind) -> Header {
    Header {
        kind: kind as u32,
        cpu: 1,
        boot_ns: 5_000,
    }
}

#[test]
fn decodes_a_fork_and_tells_threads_apart() {
    let raw = ForkEvent {
        header: header(EventKind::Fork),
        parent_pid: 10,
        parent_tgid: 10,
        child_pid: 11,
        child_tgid: 11,
        child_ppid: 10,
        child_flags: 0,
        child_cgroup_id: 77,
        parent_comm: comm("bash"),
        child_comm: comm("bash"),
    };
    let Ok(Event::Fork(f)) = decode(&bytes_of(&raw)) else {
        panic!("not a fork")
    };
    assert_eq!(
        (f.parent_tgid, f.child_pid, f.child_tgid, f.child_cgroup_id),
        (10, 11, 11, 77)
    );
    assert!(!f.is_thread());
    assert_eq!(f.child_comm.to_string(), "bash");
    let thread = ForkEvent {
        child_pid: 12,
        child_tgid: 10,
        child_flags: PF_KTHREAD,
        ..raw
    };
    let Ok(Event::Fork(t)) = decode(&bytes_of(&thread)) else {
        panic!("not a fork")
    };
    assert!(t.is_thread());
    assert!(t.kernel_thread);
}

#[test]
fn decodes_exit_status_layouts() {
    assert_eq!(ExitStatus::from_raw(3 << 8), ExitStatus::Exited(3));
    assert_eq!(ExitStatus::from_raw(0), ExitStatus::Exited(0));
    assert_eq!(
        ExitStatus::from_raw(9),
        ExitStatus::Signaled {
            signal: 9,
            core_dumped: false
        }
    );
    assert_eq!(
        ExitStatus::from_raw(0x80 | 11),
        ExitStatus::Signaled {
            signal: 11,
            core_dumped: true
        }
    );
    assert!(!ExitStatus::Exited(0).is_failure());
    assert!(ExitStatus::Exited(1).is_failure());
    let raw = ExitEvent {
        header: header(EventKind::Exit),
        pid: 20,
        tgid: 20,
        ppid: 1,
        exit_code: 3 << 8,
        flags: 0,
        group_dead: 1,
        comm: comm("false"),
    };
    let Ok(Event::Exit(e)) = decode(&bytes_of(&raw)) else {
        panic!("not an exit")
    };
    assert_eq!(e.status, ExitStatus::Exited(3));
    assert!(e.group_dead && !e.is_thread_exit());
}

#[test]
fn decodes_exec_filename_and_truncation() {
    let mut filename = [0u8; PATH_LEN];
    filename[..9].copy_from_slice(b"/bin/true");
    let mut args = [0u8; ARGS_LEN];
    args[..13].copy_from_slice(b"true\0-x\0a b\0\0");
    let raw = ExecEvent {
        header: header(EventKind::Exec),
        pid: 5,
        tgid: 5,
        old_pid: 5,
        filename_len: 9,
        args_len: 12,
        args_cut: 0,
        comm: comm("true"),
        filename,
        args,
    };
    let Ok(Event::Exec(e)) = decode(&bytes_of(&raw)) else {
        panic!("not an exec")
    };
    assert_eq!(
        (&*e.filename, e.filename_truncated),
        (&b"/bin/true"[..], false)
    );
    let args = |e: &Exec| {
        e.cmdline
            .as_ref()
            .map(|a| a.iter().collect::<Vec<_>>().concat())
    };
    assert_eq!(
        e.cmdline,
        Some(Args::of(&[b"true", b"-x", b"a b"])),
        "arguments stay apart, spaces and all"
    );
    assert!(!e.cmdline_truncated);
    let cut = ExecEvent {
        args_cut: 300,
        ..raw
    };
    let Ok(Event::Exec(e)) = decode(&bytes_of(&cut)) else {
        panic!("not an exec")
    };
    assert_eq!(args(&e), Some(b"true-xa b".to_vec()));
    assert!(e.cmdline_truncated);
    let mut odd = [0u8; ARGS_LEN];
    odd[..6].copy_from_slice(b"a\0\0\xff\n\0");
    let odd = ExecEvent {
        args: odd,
        args_len: 6,
        ..raw
    };
    let Ok(Event::Exec(e)) = decode(&bytes_of(&odd)) else {
        panic!("not an exec")
    };
    assert_eq!(
        e.cmdline.as_ref().map(|a| a.iter().collect::<Vec<_>>()),
        Some(vec![&b"a"[..], b"", b"\xff\n"]),
        "an empty argument and raw bytes are kept"
    );
    let unreadable = ExecEvent { args_len: 0, ..raw };
    let Ok(Event::Exec(e)) = decode(&bytes_of(&unreadable)) else {
        panic!("not an exec")
    };
    assert_eq!(e.cmdline, None);
    let long = ExecEvent {
        filename: [b'a'; PATH_LEN],
        filename_len: (PATH_LEN - 1) as u32,
        ..raw
    };
    let Ok(Event::Exec(e)) = decode(&bytes_of(&long)) else {
        panic!("not an exec")
    };
    assert!(e.filename_truncated);
    assert_eq!(e.filename.len(), PATH_LEN - 1);
}

#[test]
fn oom_fields_follow_the_present_mask() {
    let raw = OomKillEvent {
        header: header(EventKind::OomKill),
        pid: 42,
        uid: 0,
        trigger_pid: 43,
        trigger_tgid: 42,
        total_vm_kb: 1000,
        anon_rss_kb: 900,
        file_rss_kb: 0,
        shmem_rss_kb: 0,
        pgtables_kb: 8,
        oom_score_adj: -100,
        present: oom_field::ANON_RSS | oom_field::OOM_SCORE_ADJ,
        comm: comm("hog"),
    };
    let Ok(Event::OomKill(o)) = decode(&bytes_of(&raw)) else {
        panic!("not an oom")
    };
    assert_eq!(o.anon_rss_kb, Some(900));
    assert_eq!(o.oom_score_adj, Some(-100));
    assert_eq!((o.total_vm_kb, o.comm, o.uid), (None, None, None));
}

#[test]
fn decodes_a_condemnation_and_its_root() {
    let raw = CondemnedEvent {
        header: header(EventKind::Condemned),
        tag: guard_common::auto_tag(4321, 99_000_000_000),
        births: 100,
        growth: 40,
        window_ns: 1_000_000_000,
        forker_tgid: 4400,
        signal: 9,
        deep_births: 6,
        reserved: 0,
    };
    let Ok(Event::Condemned(c)) = decode(&bytes_of(&raw)) else {
        panic!("not a condemnation")
    };
    assert_eq!(c.root_tgid, Some(4321));
    assert_eq!(c.deep_births, 6);
    assert_eq!(
        (c.births, c.growth, c.forker_tgid, c.signal),
        (100, 40, 4400, 9)
    );
    // The agent's own tags name no root.
    let agent_tag = CondemnedEvent { tag: 17, ..raw };
    let Ok(Event::Condemned(c)) = decode(&bytes_of(&agent_tag)) else {
        panic!("not a condemnation")
    };
    assert_eq!(c.root_tgid, None);
}

#[test]
fn rejects_short_and_unknown_records() {
    assert_eq!(
        decode(&[0; 8]),
        Err(DecodeError::Short { len: 8, need: 16 })
    );
    let mut bytes = bytes_of(&header(EventKind::Fork));
    assert_eq!(
        decode(&bytes),
        Err(DecodeError::Short {
            len: 16,
            need: size_of::<ForkEvent>()
        })
    );
    bytes[0] = 99;
    assert_eq!(decode(&bytes), Err(DecodeError::UnknownKind(99)));
}
