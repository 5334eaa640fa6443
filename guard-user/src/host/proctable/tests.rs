use super::*;
use crate::kernel::decode::{CgroupAttach, Exec, Exit, ExitStatus, Fork};

const MOUNTINFO: &str = "\
31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
33 30 0:29 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
";
const CGROUP: &str = "8:pids:/\n0::/\n";

/// A table over an empty fake /proc with one known process, 100.
fn table() -> (ProcessTable, tempdir::Dir) {
    let hierarchies = Arc::new(Hierarchies::parse(MOUNTINFO, CGROUP).expect("hierarchies"));
    let dir = tempdir::Dir::new();
    let proc100 = dir.path().join("100");
    std::fs::create_dir_all(&proc100).expect("mkdir");
    std::fs::write(
        proc100.join("stat"),
        "100 (my shell) S 1 100 100 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 250 0 0",
    )
    .expect("stat");
    std::fs::write(proc100.join("cgroup"), "8:pids:/jobs\n0::/\n").expect("cgroup");
    let mut t = ProcessTable::new(hierarchies, dir.path());
    t.v2 = None; // no real v2 tree behind the fixture
    t.seed();
    (t, dir)
}

fn fork(parent: u32, child: u32, tgid: u32, at: u64) -> Event {
    Event::Fork(Fork {
        boot_ns: at,
        parent_pid: parent,
        parent_tgid: parent,
        child_pid: child,
        child_tgid: tgid,
        child_ppid: parent,
        kernel_thread: false,
        child_cgroup_id: 0,
        parent_comm: Comm::from_str_lossy("my shell"),
        child_comm: Comm::from_str_lossy("my shell"),
    })
}

fn exit(pid: u32, tgid: u32, group_dead: bool) -> Event {
    Event::Exit(Exit {
        boot_ns: 10_000_000_000,
        pid,
        tgid,
        ppid: 100,
        status: ExitStatus::Exited(0),
        group_dead,
        kernel_thread: false,
        comm: Comm::from_str_lossy("worker"),
    })
}

#[test]
fn seeds_from_proc_with_comm_parent_and_cgroups() {
    let (t, _dir) = table();
    let p = t.get(100).expect("seeded");
    assert_eq!((p.ppid, p.comm.to_string().as_str()), (1, "my shell"));
    assert_eq!(p.cgroup(1).map(|s| &**s), Some("/sys/fs/cgroup/pids/jobs"));
    // starttime 250 ticks at 100 Hz.
    assert_eq!(
        p.start_boot_ns,
        250 * 1_000_000_000 / procfs::clock_ticks_per_sec()
    );
}

#[test]
fn fork_inherits_cgroups_exec_renames_exit_removes() {
    let (mut t, _dir) = table();
    let child = t.apply(&fork(100, 200, 200, 9_000_000_000)).expect("child");
    assert_eq!(
        child.cgroup(1).map(|s| &**s),
        Some("/sys/fs/cgroup/pids/jobs")
    );
    assert_eq!(child.ppid, 100);
    let exec = Event::Exec(Exec {
        boot_ns: 9_100_000_000,
        pid: 200,
        tgid: 200,
        old_pid: 200,
        comm: Comm::from_str_lossy("worker"),
        filename: (*b"/usr/bin/worker").into(),
        filename_truncated: false,
        cmdline: Some(crate::kernel::decode::Args::of(&[b"worker", b"--fast"])),
        cmdline_truncated: false,
    });
    assert_eq!(
        t.apply(&exec).map(|p| p.comm.to_string()),
        Some("worker".into())
    );
    let node = t.get(200).map(|p| p.node).expect("worker");
    let args = t.lineage().get(node).and_then(|n| n.cmdline.clone());
    assert_eq!(
        args.as_deref(),
        Some(&["worker".into(), "--fast".into()][..])
    );
    // Renamed by prctl (no event): its next fork tells the new name.
    let Event::Fork(mut renamed) = fork(200, 250, 250, 9_150_000_000) else {
        unreachable!()
    };
    renamed.parent_comm = Comm::from_str_lossy("worker: idle");
    t.apply(&Event::Fork(renamed));
    assert_eq!(
        t.get(200).map(|p| p.comm.to_string()),
        Some("worker: idle".into())
    );
    assert_eq!(
        t.lineage().get(node).map(|n| n.comm.to_string()),
        Some("worker: idle".into())
    );
    t.apply(&exit(250, 250, true));
    // A thread neither adds a process nor removes one when it ends.
    t.apply(&fork(200, 201, 200, 9_200_000_000));
    assert_eq!(t.len(), 2);
    assert!(t.apply(&exit(201, 200, false)).is_some());
    assert_eq!(t.len(), 2);
    let gone = t.apply(&exit(200, 200, true)).expect("removed entry");
    assert_eq!(gone.comm.to_string(), "worker: idle");
    assert!(t.get(200).is_none());
}

fn attach(pid: u32, tgid: u32, path: &str) -> Event {
    Event::CgroupAttach(CgroupAttach {
        boot_ns: 9_500_000_000,
        pid,
        tgid,
        ppid: 100,
        comm: Comm::from_str_lossy("mover"),
        kernel_thread: false,
        start_ns: 9_400_000_000,
        hierarchy_id: 8,
        path: path.into(),
    })
}

/// A process first heard of at its move into the scope (its fork was
/// outside), already gone from /proc: the record itself tells who it is,
/// so its exit is known.
#[test]
fn a_mover_gone_from_proc_is_known_from_its_record() {
    let (mut t, _dir) = table();
    let moved = t.apply(&attach(400, 400, "/jobs/ci")).expect("known");
    assert_eq!(
        (moved.ppid, moved.comm.to_string(), moved.start_boot_ns),
        (100, "mover".to_owned(), 9_400_000_000)
    );
    assert_eq!(
        moved.cgroup(1).map(|s| &**s),
        Some("/sys/fs/cgroup/pids/jobs/ci")
    );
    // Its parent is linked in the lineage.
    let node = t.lineage().get(moved.node).expect("node");
    assert_eq!(node.parent, t.get(100).map(|p| p.node));
    // A thread's record does not give its process's start.
    let thread = t.apply(&attach(501, 500, "/jobs/ci")).expect("known");
    assert_eq!(thread.start_boot_ns, 0);
}

#[test]
fn attach_moves_one_hierarchy_only() {
    let (mut t, _dir) = table();
    t.apply(&fork(100, 300, 300, 9_000_000_000));
    let moved = t.apply(&attach(300, 300, "/jobs/bomb")).expect("moved");
    assert_eq!(
        moved.cgroup(1).map(|s| &**s),
        Some("/sys/fs/cgroup/pids/jobs/bomb")
    );
    assert_eq!(
        moved.cgroup(0).map(|s| &**s),
        Some("/sys/fs/cgroup/unified")
    );
    // The parent stays where it was.
    assert_eq!(
        t.get(100).and_then(|p| p.cgroup(1)).map(|s| &**s),
        Some("/sys/fs/cgroup/pids/jobs")
    );
    // Its children are born in the new cgroup.
    let grandchild = t
        .apply(&fork(300, 301, 301, 9_600_000_000))
        .expect("grandchild");
    assert_eq!(
        grandchild.cgroup(1).map(|s| &**s),
        Some("/sys/fs/cgroup/pids/jobs/bomb")
    );
}

#[test]
fn a_seeded_entry_newer_than_the_fork_wins() {
    let (mut t, _dir) = table();
    // Process 100 started at 2.5 s; a queued fork event from 1 s for the
    // same tgid (an older incarnation) must not overwrite it.
    let kept = t.apply(&fork(1, 100, 100, 1_000_000_000)).expect("kept");
    assert_eq!(kept.comm.to_string(), "my shell");
    assert_eq!(kept.ppid, 1);
}

#[test]
fn sweep_drops_vanished_processes() {
    let (mut t, _dir) = table();
    t.apply(&fork(100, 400, 400, 9_000_000_000));
    assert_eq!(t.sweep(), 1, "400 has no /proc entry");
    assert!(t.get(100).is_some());
}

#[test]
fn lineage_survives_reparenting_and_ghosts_are_reaped() {
    let (mut t, _dir) = table();
    // 100 (shell) -> 500 (bomb root) -> 501, 502; 501 -> 503.
    t.apply(&fork(100, 500, 500, 9_000_000_000));
    t.apply(&fork(500, 501, 501, 9_000_000_001));
    t.apply(&fork(500, 502, 502, 9_000_000_002));
    t.apply(&fork(501, 503, 503, 9_000_000_003));
    let root = t.get(500).expect("root").node;
    // The root and 501 exit at once: their children are orphans now.
    t.apply(&exit(500, 500, true));
    t.apply(&exit(501, 501, true));
    let mut members = t.lineage().live_descendants(root);
    members.sort();
    assert_eq!(
        members.iter().map(|m| m.0).collect::<Vec<_>>(),
        vec![502, 503]
    );
    let ancestry: Vec<u32> = t
        .lineage()
        .ancestors(t.get(503).expect("503").node)
        .map(|(_, n)| n.tgid)
        .collect();
    assert_eq!(
        ancestry,
        vec![501, 500, 100],
        "fork-time ancestry, through ghosts"
    );
    assert!(!t.lineage().get(root).expect("ghost").alive);
    // When the last descendants die, the ghosts go too.
    let before = t.lineage().len();
    t.apply(&exit(502, 502, true));
    t.apply(&exit(503, 503, true));
    assert_eq!(
        before - t.lineage().len(),
        4,
        "502, 503 and the ghosts 500, 501"
    );
    assert!(t.lineage().get(root).is_none());
    assert!(t.lineage().live_descendants(root).is_empty());
}

#[test]
fn stat_with_parentheses_in_comm() {
    let s = procfs::parse_stat("7 (a) (b) R 3 7 7 0 -1 2097152 0 0 0 0 0 0 0 0 20 0 1 0 99 0 0")
        .expect("parse");
    assert_eq!(
        (s.comm.as_str(), s.state, s.ppid, s.start_ticks),
        ("a) (b", 'R', 3, 99)
    );
    assert!(procfs::is_kernel_thread(s.flags));
}

/// A temporary directory removed on drop (no extra crate for tests).
mod tempdir {
    use std::path::{Path, PathBuf};

    pub struct Dir(PathBuf);

    impl Dir {
        pub fn new() -> Self {
            static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = std::env::temp_dir().join(format!("guard-unit-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&path).expect("create temp dir");
            Dir(path)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
