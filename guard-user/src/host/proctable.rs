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
    host::cgroup::{CgroupSet, Hierarchies, Interner},
    host::procfs,
    kernel::decode::{Comm, Event},
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
        self.descendants_where(root, false)
    }

    /// Processes descending from `root`, live or gone (a gone one is kept
    /// while a descendant of it lives), as (tgid, node).
    pub fn descendants(&self, root: NodeId) -> Vec<(u32, NodeId)> {
        self.descendants_where(root, true)
    }

    fn descendants_where(&self, root: NodeId, gone_too: bool) -> Vec<(u32, NodeId)> {
        let mut memo: HashMap<NodeId, bool> = HashMap::new();
        memo.insert(root, true);
        let mut out = Vec::new();
        for (&id, node) in &self.nodes {
            if !node.alive && !gone_too {
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
            let text = interner.intern(&crate::host::cgroup::path_text(
                std::os::unix::ffi::OsStrExt::as_bytes(dir.as_os_str()),
            ));
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
    /// A table over a fixture with no real v2 tree behind it (tests).
    #[cfg(test)]
    pub(crate) fn without_v2_ids(mut self) -> Self {
        self.v2 = None;
        self
    }

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
    /// Drops a process the agent will hear no more of (the probes leave it
    /// out: it moved out of the scope).
    pub fn forget(&mut self, tgid: u32) {
        self.remove(tgid);
    }

    /// Drops every process `unwanted` picks; returns how many.
    pub fn forget_if(&mut self, unwanted: impl Fn(&ProcInfo) -> bool) -> usize {
        let gone: Vec<u32> = self
            .procs
            .values()
            .filter(|p| unwanted(p))
            .map(|p| p.tgid)
            .collect();
        for tgid in &gone {
            self.remove(*tgid);
        }
        gone.len()
    }

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
        let cgroups = match crate::host::cgroup::read_paths(&dir.join("cgroup")) {
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
                    None => match crate::host::cgroup::read_paths(
                        &self.proc_root.join(format!("{}/cgroup", f.child_tgid)),
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
                if !self.procs.contains_key(&a.tgid) && self.read_in(a.tgid).is_none() {
                    // Gone from /proc already (a short-lived process that
                    // moved into the scope): as the record tells it.
                    self.add_from_record(a);
                }
                let info = self.procs.get_mut(&a.tgid)?;
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
            self.read_in(tgid)?;
        }
        self.procs.get_mut(&tgid)
    }

    /// Adds `tgid` as /proc tells it.
    fn read_in(&mut self, tgid: u32) -> Option<()> {
        let info = self.read_proc(tgid)?;
        self.insert_new(info);
        Some(())
    }

    fn insert_new(&mut self, mut info: ProcInfo) {
        let parent = self.procs.get(&info.ppid).map(|p| p.node);
        info.node = self.lineage.add(parent, &info);
        self.procs.insert(info.tgid, info);
    }

    /// Adds the mover of a cgroup move as its record tells it (its other
    /// hierarchies' cgroups unknown).
    fn add_from_record(&mut self, a: &crate::kernel::decode::CgroupAttach) {
        let info = ProcInfo {
            tgid: a.tgid,
            ppid: a.ppid,
            comm: a.comm,
            kernel_thread: a.kernel_thread,
            // A thread's start is not its process's.
            start_boot_ns: if a.pid == a.tgid { a.start_ns } else { 0 },
            cgroups: self.empty_set(),
            node: 0,
        };
        self.insert_new(info);
    }
}

/// Path of /proc on this host.
pub fn default_proc_root() -> &'static Path {
    Path::new("/proc")
}

#[cfg(test)]
mod tests;
