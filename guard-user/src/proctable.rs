//! The process table: every live process (by tgid) with its parent, comm and
//! cgroups, seeded from /proc at start-up and kept current from the event
//! stream, so every event can be shown with names rather than numbers.
//!
//! cgroup membership: a child starts in its parent's cgroups (copied at
//! fork), moves with `cgroup_attach` events (v1 and v2, written to
//! cgroup.procs or tasks), and on v2 a child spawned straight into another
//! cgroup (clone3 CLONE_INTO_CGROUP) is placed by the v2 cgroup id the fork
//! probe reads from the child.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use crate::{
    cgroup::{CgroupSet, Hierarchies, Interner},
    decode::{Comm, Event},
    procfs,
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcInfo {
    pub tgid: u32,
    pub ppid: u32,
    pub comm: Comm,
    pub kernel_thread: bool,
    /// CLOCK_BOOTTIME ns at fork (from the event, or /proc's starttime).
    pub start_boot_ns: u64,
    pub cgroups: CgroupSet,
    /// This process's node in the [`Lineage`].
    pub node: NodeId,
}

impl ProcInfo {
    /// Directory of this process's cgroup in hierarchy `index`.
    pub fn cgroup(&self, index: usize) -> Option<&Arc<str>> {
        self.cgroups.get(index).and_then(Option::as_ref)
    }
}

/// Identity of a process in the lineage: unlike a pid, never reused.
pub type NodeId = u64;

/// Who begot whom, recorded at fork time and kept while any descendant
/// lives, so a subtree stays whole when its members are re-parented (a bash
/// fork bomb's processes are orphaned at once and adopted by PID 1 or a
/// subreaper; their fork-time ancestry still leads to the shell that started
/// it). Dead ancestors stay as ghosts until their last descendant is gone.
#[derive(Default)]
pub struct Lineage {
    nodes: HashMap<NodeId, LineageNode>,
    next: NodeId,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineageNode {
    pub tgid: u32,
    /// The process that forked this one (not the current parent).
    pub parent: Option<NodeId>,
    pub comm: Comm,
    pub alive: bool,
    pub born_ns: u64,
    pub kernel_thread: bool,
    /// The program it runs, from its last exec event (none: it was forked
    /// and has not exec'd since guard started; its parent's program).
    pub exe: Option<Arc<str>>,
    /// Its arguments at that exec (cut at 128 bytes), or its parent's;
    /// bytes that are not UTF-8 replaced (the exec record has them exact).
    pub cmdline: Option<Arc<[String]>>,
    /// Its cgroups when it was last seen alive.
    pub cgroups: CgroupSet,
    /// How many generations of one program forked each other down to it:
    /// its parent's depth + 1 while it runs its parent's program (a forked
    /// copy, or an exec of the same program), 0 once it runs another.
    pub depth: u32,
    /// Nodes, live or ghost, whose `parent` is this one.
    pub(crate) children: u32,
}

impl Lineage {
    pub(crate) fn add(&mut self, parent: Option<NodeId>, info: &ProcInfo) -> NodeId {
        self.next += 1;
        let parent = parent.filter(|p| self.nodes.contains_key(p));
        let mut depth = 0;
        if let Some(p) = parent.and_then(|p| self.nodes.get_mut(&p)) {
            p.children += 1;
            if p.comm == info.comm {
                depth = p.depth + 1;
            }
        }
        let node = LineageNode {
            tgid: info.tgid,
            parent,
            comm: info.comm,
            alive: true,
            born_ns: info.start_boot_ns,
            kernel_thread: info.kernel_thread,
            exe: parent
                .and_then(|p| self.nodes.get(&p))
                .and_then(|p| p.exe.clone()),
            cmdline: parent
                .and_then(|p| self.nodes.get(&p))
                .and_then(|p| p.cmdline.clone()),
            cgroups: info.cgroups.clone(),
            depth,
            children: 0,
        };
        self.nodes.insert(self.next, node);
        self.next
    }

    /// The process died: drop its node, and any ancestors it kept alive as
    /// ghosts, once nothing descends from them.
    pub(crate) fn died(&mut self, id: NodeId) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        node.alive = false;
        let mut current = id;
        loop {
            let Some(node) = self.nodes.get(&current) else {
                return;
            };
            if node.alive || node.children > 0 {
                return;
            }
            let parent = node.parent;
            self.nodes.remove(&current);
            let Some(parent) = parent else { return };
            match self.nodes.get_mut(&parent) {
                Some(p) => p.children = p.children.saturating_sub(1),
                None => return,
            }
            current = parent;
        }
    }

    pub fn get(&self, id: NodeId) -> Option<&LineageNode> {
        self.nodes.get(&id)
    }

    /// Number of nodes, live and ghost.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// `id`'s ancestors by fork, nearest first.
    pub fn ancestors(&self, id: NodeId) -> impl Iterator<Item = (NodeId, &LineageNode)> + '_ {
        let mut next = self.nodes.get(&id).and_then(|n| n.parent);
        std::iter::from_fn(move || {
            let id = next?;
            let node = self.nodes.get(&id)?;
            next = node.parent;
            Some((id, node))
        })
    }

    /// Live processes descending from `root` (itself included when alive),
    /// as (tgid, node).
    pub fn live_descendants(&self, root: NodeId) -> Vec<(u32, NodeId)> {
        let mut memo: HashMap<NodeId, bool> = HashMap::new();
        memo.insert(root, true);
        let mut out = Vec::new();
        for (&id, node) in &self.nodes {
            if !node.alive {
                continue;
            }
            let mut path = Vec::new();
            let mut current = Some(id);
            let verdict = loop {
                let Some(c) = current else { break false };
                if let Some(&known) = memo.get(&c) {
                    break known;
                }
                path.push(c);
                current = self.nodes.get(&c).and_then(|n| n.parent);
            };
            for p in path {
                memo.insert(p, verdict);
            }
            if verdict {
                out.push((node.tgid, id));
            }
        }
        out
    }
}

pub struct ProcessTable {
    procs: HashMap<u32, ProcInfo>,
    lineage: Lineage,
    hierarchies: Arc<Hierarchies>,
    interner: Interner,
    proc_root: PathBuf,
    v2: Option<V2Ids>,
}

/// v2 cgroup id (the directory's inode number) ↔ directory.
struct V2Ids {
    index: usize,
    mount: PathBuf,
    by_id: HashMap<u64, Arc<str>>,
    by_dir: HashMap<Arc<str>, u64>,
}

impl V2Ids {
    fn id_of(&mut self, dir: &Arc<str>) -> Option<u64> {
        if let Some(&id) = self.by_dir.get(dir) {
            return Some(id);
        }
        let id = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&**dir).ok()?);
        self.by_dir.insert(dir.clone(), id);
        Some(id)
    }

    fn dir_of(&mut self, id: u64, interner: &mut Interner) -> Option<Arc<str>> {
        if let Some(dir) = self.by_id.get(&id) {
            return Some(dir.clone());
        }
        // A cgroup not seen before: walk the v2 tree once more.
        let mut stack = vec![self.mount.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(meta) = std::fs::metadata(&dir) else {
                continue;
            };
            let text = interner.intern(&dir.to_string_lossy());
            let ino = std::os::unix::fs::MetadataExt::ino(&meta);
            self.by_id.insert(ino, text.clone());
            self.by_dir.insert(text, ino);
            if let Ok(entries) = std::fs::read_dir(&dir) {
                stack.extend(
                    entries
                        .flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path()),
                );
            }
        }
        self.by_id.get(&id).cloned()
    }
}

impl ProcessTable {
    pub fn new(hierarchies: Arc<Hierarchies>, proc_root: impl Into<PathBuf>) -> Self {
        let v2 = hierarchies.index_of_id(0).map(|index| V2Ids {
            index,
            mount: hierarchies.list[index].mount.clone(),
            by_id: HashMap::new(),
            by_dir: HashMap::new(),
        });
        Self {
            procs: HashMap::new(),
            lineage: Lineage::default(),
            hierarchies,
            interner: Interner::default(),
            proc_root: proc_root.into(),
            v2,
        }
    }

    pub fn len(&self) -> usize {
        self.procs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    pub fn get(&self, tgid: u32) -> Option<&ProcInfo> {
        self.procs.get(&tgid)
    }

    /// Every live process.
    pub fn processes(&self) -> impl Iterator<Item = &ProcInfo> {
        self.procs.values()
    }

    pub fn hierarchies(&self) -> &Hierarchies {
        &self.hierarchies
    }

    /// Adds every live process under the proc root (zombies are skipped).
    /// Entries already known from events are kept: they are newer.
    pub fn seed(&mut self) {
        let Ok(entries) = std::fs::read_dir(&self.proc_root) else {
            return;
        };
        let tgids: Vec<u32> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        let mut fresh = Vec::new();
        for tgid in tgids {
            if !self.procs.contains_key(&tgid)
                && let Some(info) = self.read_proc(tgid)
            {
                fresh.push(info);
            }
        }
        // Parents first, so that children can link to them; a process that
        // was already re-parented links to its adopter (the fork-time parent
        // of a process older than guard is unknowable).
        fresh.sort_by_key(|p| p.start_boot_ns);
        for mut info in fresh {
            let parent = self.procs.get(&info.ppid).map(|p| p.node);
            info.node = self.lineage.add(parent, &info);
            self.procs.insert(info.tgid, info);
        }
    }

    pub fn lineage(&self) -> &Lineage {
        &self.lineage
    }

    /// Removes a live process, keeping its lineage node as a ghost while it
    /// has descendants.
    fn remove(&mut self, tgid: u32) -> Option<ProcInfo> {
        let info = self.procs.remove(&tgid)?;
        self.lineage.died(info.node);
        Some(info)
    }

    /// Whether `tgid` exists now (a zombie does), by /proc.
    pub fn exists(&self, tgid: u32) -> bool {
        self.proc_root.join(tgid.to_string()).exists()
    }

    /// Takes the kernel's word for `tgid`'s name.
    fn rename(&mut self, tgid: u32, comm: Comm) {
        if let Some(p) = self.procs.get_mut(&tgid)
            && p.comm != comm
        {
            p.comm = comm;
            if let Some(n) = self.lineage.nodes.get_mut(&p.node) {
                n.comm = comm;
            }
        }
    }

    /// Drops entries whose process is gone (after lost events, an exit may
    /// have been missed).
    pub fn sweep(&mut self) -> usize {
        let gone: Vec<u32> = self
            .procs
            .keys()
            .filter(|&&tgid| !self.exists(tgid))
            .copied()
            .collect();
        for tgid in &gone {
            self.remove(*tgid);
        }
        gone.len()
    }

    fn read_proc(&mut self, tgid: u32) -> Option<ProcInfo> {
        let dir = self.proc_root.join(tgid.to_string());
        let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
        let parsed = procfs::parse_stat(&stat)?;
        if parsed.state == 'Z' || parsed.state == 'X' {
            return None;
        }
        let cgroups = match std::fs::read_to_string(dir.join("cgroup")) {
            Ok(text) => self.hierarchies.set_from_proc(&text, &mut self.interner),
            Err(_) => self.empty_set(),
        };
        Some(ProcInfo {
            tgid,
            ppid: parsed.ppid,
            comm: Comm::from_str_lossy(&parsed.comm),
            kernel_thread: procfs::is_kernel_thread(parsed.flags),
            start_boot_ns: parsed.start_ticks.saturating_mul(1_000_000_000)
                / procfs::clock_ticks_per_sec(),
            cgroups,
            node: 0,
        })
    }

    fn empty_set(&self) -> CgroupSet {
        vec![None; self.hierarchies.list.len()].into()
    }

    /// Applies an event and returns what the table knows of its subject:
    /// the process after the event, or for a process exit the entry removed.
    pub fn apply(&mut self, event: &Event) -> Option<ProcInfo> {
        match event {
            Event::Fork(f) => {
                if f.is_thread() {
                    return self.lookup(f.child_tgid);
                }
                if let Some(existing) = self.procs.get(&f.child_tgid)
                    && existing.start_boot_ns >= f.boot_ns
                {
                    // Seeded from /proc after this fork happened: newer.
                    return Some(existing.clone());
                }
                let mut cgroups = match self.procs.get(&f.parent_tgid) {
                    Some(parent) => parent.cgroups.clone(),
                    None => match std::fs::read_to_string(
                        self.proc_root.join(format!("{}/cgroup", f.child_tgid)),
                    ) {
                        Ok(text) => self.hierarchies.set_from_proc(&text, &mut self.interner),
                        Err(_) => self.empty_set(),
                    },
                };
                if let Some(v2) = self.v2.as_mut()
                    && f.child_cgroup_id != 0
                {
                    let inherited = cgroups.get(v2.index).cloned().flatten();
                    let same =
                        inherited.as_ref().and_then(|dir| v2.id_of(dir)) == Some(f.child_cgroup_id);
                    if !same && let Some(dir) = v2.dir_of(f.child_cgroup_id, &mut self.interner) {
                        let mut moved: Vec<_> = cgroups.to_vec();
                        moved[v2.index] = Some(dir);
                        cgroups = moved.into();
                    }
                }
                // The forker's name as the kernel has it now: a process
                // renames itself with prctl(PR_SET_NAME) without an event.
                // Only the main thread's name is the process's.
                if f.parent_pid == f.parent_tgid {
                    self.rename(f.parent_tgid, f.parent_comm);
                }
                // A stale entry under this tgid (an exit we missed) ends here.
                self.remove(f.child_tgid);
                let parent = self.procs.get(&f.parent_tgid).map(|p| p.node);
                let mut info = ProcInfo {
                    tgid: f.child_tgid,
                    ppid: f.child_ppid,
                    comm: f.child_comm,
                    kernel_thread: f.kernel_thread,
                    start_boot_ns: f.boot_ns,
                    cgroups,
                    node: 0,
                };
                info.node = self.lineage.add(parent, &info);
                self.procs.insert(f.child_tgid, info.clone());
                Some(info)
            }
            Event::Exec(e) => {
                let info = self.lookup_or_read(e.tgid)?;
                info.comm = e.comm;
                let (node, snapshot) = (info.node, info.clone());
                let parent_comm = self
                    .lineage
                    .nodes
                    .get(&node)
                    .and_then(|n| n.parent)
                    .and_then(|p| self.lineage.nodes.get(&p))
                    .map(|p| p.comm);
                if let Some(n) = self.lineage.nodes.get_mut(&node) {
                    if parent_comm != Some(e.comm) {
                        n.depth = 0;
                    }
                    n.comm = e.comm;
                    n.exe = Some(Arc::from(String::from_utf8_lossy(&e.filename).as_ref()));
                    n.cmdline = e.cmdline.as_ref().map(|args| {
                        args.iter()
                            .map(|a| String::from_utf8_lossy(a).into_owned())
                            .collect()
                    });
                }
                Some(snapshot)
            }
            Event::Exit(e) => {
                if e.group_dead {
                    self.remove(e.tgid)
                } else {
                    self.lookup(e.tgid)
                }
            }
            Event::CgroupAttach(a) => {
                let index = self.hierarchies.index_of_id(a.hierarchy_id)?;
                let dir = self
                    .interner
                    .intern(&self.hierarchies.list[index].dir_of(&a.path));
                let info = self.lookup_or_read(a.tgid)?;
                let mut set: Vec<_> = info.cgroups.to_vec();
                set[index] = Some(dir);
                info.cgroups = set.into();
                let (node, snapshot) = (info.node, info.clone());
                if let Some(n) = self.lineage.nodes.get_mut(&node) {
                    n.cgroups = snapshot.cgroups.clone();
                }
                Some(snapshot)
            }
            Event::OomKill(o) => self.lookup(o.pid),
            Event::HungTask(h) => self.lookup(h.tgid),
            Event::Unblocked(u) => self.lookup(u.tgid),
            Event::Rss(r) => self.lookup(r.tgid),
            Event::ReclaimStall(r) => self.lookup(r.tgid),
            Event::Condemned(c) => self.lookup(c.forker_tgid),
        }
    }

    fn lookup(&self, tgid: u32) -> Option<ProcInfo> {
        self.procs.get(&tgid).cloned()
    }

    fn lookup_or_read(&mut self, tgid: u32) -> Option<&mut ProcInfo> {
        if !self.procs.contains_key(&tgid) {
            let mut info = self.read_proc(tgid)?;
            let parent = self.procs.get(&info.ppid).map(|p| p.node);
            info.node = self.lineage.add(parent, &info);
            self.procs.insert(tgid, info);
        }
        self.procs.get_mut(&tgid)
    }
}

/// Path of /proc on this host.
pub fn default_proc_root() -> &'static Path {
    Path::new("/proc")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{CgroupAttach, Exec, Exit, ExitStatus, Fork};

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
            cmdline: Some(crate::decode::Args::of(&[b"worker", b"--fast"])),
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

    #[test]
    fn attach_moves_one_hierarchy_only() {
        let (mut t, _dir) = table();
        t.apply(&fork(100, 300, 300, 9_000_000_000));
        let moved = t
            .apply(&Event::CgroupAttach(CgroupAttach {
                boot_ns: 9_500_000_000,
                pid: 300,
                tgid: 300,
                hierarchy_id: 8,
                path: "/jobs/bomb".into(),
            }))
            .expect("moved");
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
        let s =
            procfs::parse_stat("7 (a) (b) R 3 7 7 0 -1 2097152 0 0 0 0 0 0 0 0 20 0 1 0 99 0 0")
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
                let path =
                    std::env::temp_dir().join(format!("guard-unit-{}-{n}", std::process::id()));
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
}
