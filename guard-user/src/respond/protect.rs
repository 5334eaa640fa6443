//! What guard never signals, whatever the configuration: PID 1, kernel
//! threads, guard itself and its ancestors, anything outside the scope,
//! service managers and session daemons ([`SUPERVISORS`]), and what
//! `--protect` names. Detectors use it to choose an offender; `act`
//! checks it again before every signal.
//!
//! A service manager is known by its executable's inode, never by its
//! comm or argv, which any user chooses (`ln -s /bin/bash sshd`): the
//! names below are looked up once in root's directories
//! (`identity::scan`), and a process is one only when the kernel says it
//! runs one of the files found. A process named like one that runs
//! something else is an ordinary process, and its records say so.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use crate::{
    host::cgroup::{Hierarchies, Interner, is_within},
    host::identity::{ExeId, TrustedExes},
    host::proctable::LineageNode,
    host::scope::Scope,
    kernel::decode::Comm,
};

/// Service managers and session daemons, by executable name: never
/// signalled, so that an explosion under one of them is pinned on the child
/// that started it (the fork probe roots a subtree at the first unprotected
/// forker) and a crash loop never stops the manager of many services.
/// Without this, the topmost unprotected ancestor of a bomb started in an
/// ssh session is sshd itself. PID 1 is protected whatever it runs.
pub const SUPERVISORS: &[&str] = &[
    "systemd",
    "init",
    "sshd",
    "supervisord",
    "s6-supervise",
    "runsv",
    "runsvdir",
    "containerd-shim",
    "conmon",
    "tini",
    "dumb-init",
    "docker-init",
    "dockerd",
    "containerd",
    // Kubernetes nodes: the node agent, the other runtime, and OpenSSH's
    // per-session process (9.8+).
    "kubelet",
    "crio",
    "sshd-session",
];

/// One `--protect` value: a pid, a cgroup directory, an executable's path,
/// or the name of an executable in root's directories.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Protected {
    Pid(u32),
    Cgroup(String),
    /// A program by name, looked up in `identity::TRUSTED_DIRS`.
    Program(String),
    /// A program by path (a root-owned file in root-owned directories).
    Exe(PathBuf),
}

pub fn parse_protected(text: &str) -> Result<Protected, String> {
    if text.is_empty() {
        return Err("empty --protect value".into());
    }
    if let Ok(pid) = text.parse::<u32>() {
        if pid == 0 {
            return Err("--protect 0: 0 is no process id".into());
        }
        return Ok(Protected::Pid(pid));
    }
    if text.starts_with('/') {
        let path = std::fs::canonicalize(text).map_err(|e| format!("--protect {text}: {e}"))?;
        if path.is_file() {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).map_or(0, |m| m.permissions().mode());
            if mode & 0o111 == 0 {
                return Err(format!(
                    "--protect {text}: not an executable (mode {:o}); give a program, a pid \
                     or a cgroup directory",
                    mode & 0o7777
                ));
            }
            crate::host::identity::check_root_owned(&path, true).map_err(|why| {
                format!(
                    "--protect {text}: {why}; an executable protects its processes only when \
                     no ordinary user can replace it"
                )
            })?;
            return Ok(Protected::Exe(path));
        }
        if !path.join("cgroup.procs").is_file() {
            return Err(format!(
                "--protect {text}: neither an executable nor a cgroup directory (no \
                 cgroup.procs in it); give a pid, a program, or a directory under /sys/fs/cgroup"
            ));
        }
        return Ok(Protected::Cgroup(path.to_string_lossy().into_owned()));
    }
    if text.contains('/') {
        return Err(format!(
            "--protect {text}: a program's path must be absolute"
        ));
    }
    Ok(Protected::Program(text.to_owned()))
}

/// How a process's executable is read (from /proc; tests inject one).
pub type ExeReader = Arc<dyn Fn(u32) -> Option<ExeId> + Send + Sync>;

#[derive(Clone)]
pub struct Protection {
    /// guard's own tgid and its ancestors' at start.
    guard_chain: HashSet<u32>,
    listed: Vec<Protected>,
    scope: Scope,
    trusted: TrustedExes,
    exe_of: ExeReader,
}

impl Default for Protection {
    fn default() -> Self {
        Self::new(
            HashSet::new(),
            Vec::new(),
            Scope::default(),
            TrustedExes::default(),
        )
    }
}

impl std::fmt::Debug for Protection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Protection")
            .field("guard_chain", &self.guard_chain)
            .field("listed", &self.listed)
            .field("trusted", &self.trusted.len())
            .finish()
    }
}

/// The names and paths whose executables are trusted: the service managers
/// and what `--protect` names.
pub fn trusted_names(listed: &[Protected]) -> (Vec<&str>, Vec<PathBuf>) {
    let mut names: Vec<&str> = SUPERVISORS.to_vec();
    let mut paths = Vec::new();
    for p in listed {
        match p {
            Protected::Program(name) => names.push(name),
            Protected::Exe(path) => paths.push(path.clone()),
            _ => {}
        }
    }
    (names, paths)
}

/// Looks on this host for the executables `trusted_names` gives (see
/// `identity::scan`): at start, and again now and then.
pub fn scan_trusted(listed: &[Protected]) -> crate::host::identity::Scan {
    let (names, paths) = trusted_names(listed);
    crate::host::identity::scan(std::path::Path::new("/"), &names, &paths)
}

impl Protection {
    pub fn new(
        guard_chain: HashSet<u32>,
        listed: Vec<Protected>,
        scope: Scope,
        trusted: TrustedExes,
    ) -> Self {
        Self {
            guard_chain,
            listed,
            scope,
            trusted,
            exe_of: Arc::new(crate::host::identity::exe_of),
        }
    }

    /// Reads executables with `exe_of` instead of /proc (tests).
    pub fn with_exe_reader(mut self, exe_of: ExeReader) -> Self {
        self.exe_of = exe_of;
        self
    }

    /// What `--protect` named.
    pub fn listed(&self) -> &[Protected] {
        &self.listed
    }

    /// The trusted executables (shared with every copy).
    pub fn trusted(&self) -> &TrustedExes {
        &self.trusted
    }

    /// guard's tgid and every ancestor's, read from /proc.
    pub fn own_chain() -> HashSet<u32> {
        let mut chain = HashSet::new();
        let mut pid = std::process::id();
        while pid > 1 && chain.insert(pid) {
            match crate::host::procfs::stat(pid).map(|s| s.ppid) {
                Some(p) => pid = p,
                None => break,
            }
        }
        chain
    }

    /// Why the process `tgid` must not be signalled, judged on what it is
    /// now (/proc): it may have exec'd since guard last saw it, and a tag
    /// it inherited in the kernel does not know about `--protect`. `None`
    /// also when it is gone (nothing to signal).
    pub fn why_now(&self, tgid: u32, hierarchies: &Hierarchies) -> Option<&'static str> {
        let needs_cgroups = !self.scope.cgroups.is_empty()
            || self
                .listed
                .iter()
                .any(|p| matches!(p, Protected::Cgroup(_)));
        // The cgroups first, then stat: a task that has begun to exit shows
        // "/" for its v1 cgroups (outside any scope), and PF_EXITING, set
        // before that and never cleared, says so in the stat read after.
        let cgroups = if needs_cgroups {
            let text = crate::host::cgroup::read_paths(std::path::Path::new(&format!(
                "/proc/{tgid}/cgroup"
            )))
            .unwrap_or_default();
            hierarchies.set_from_proc(&text, &mut Interner::default())
        } else {
            Arc::from(Vec::new())
        };
        let stat = crate::host::procfs::stat(tgid)?;
        if crate::host::procfs::is_exiting(stat.flags) {
            // Dying already: nobody to spare, nothing to signal.
            return None;
        }
        let (comm, flags) = (stat.comm.as_str(), stat.flags);
        let node = LineageNode {
            tgid,
            parent: None,
            comm: Comm::from_str_lossy(comm),
            alive: true,
            born_ns: 0,
            kernel_thread: crate::host::procfs::is_kernel_thread(flags),
            exe: None,
            cmdline: None,
            depth: 0,
            cgroups,
            children: 0,
        };
        // Without a scope or cgroup rule the empty set judges the same.
        self.why(&node)
    }

    /// Why `node` must not be signalled, or `None` when it may be.
    pub fn why(&self, node: &LineageNode) -> Option<&'static str> {
        if node.tgid <= 1 {
            return Some("PID 1");
        }
        if node.kernel_thread || node.tgid == 2 {
            return Some("a kernel thread");
        }
        if self.guard_chain.contains(&node.tgid) {
            return Some("guard itself or its ancestor");
        }
        if !self.scope.contains_cgroups(&node.cgroups) {
            return Some("outside the --cgroup scope");
        }
        for p in &self.listed {
            let hit = match p {
                Protected::Pid(pid) => node.tgid == *pid,
                Protected::Cgroup(dir) => {
                    node.cgroups.iter().flatten().any(|own| is_within(own, dir))
                }
                Protected::Program(_) | Protected::Exe(_) => false,
            };
            if hit {
                return Some("named by --protect");
            }
        }
        if !node.alive {
            return None;
        }
        let exe = (self.exe_of)(node.tgid)?;
        let trusted = self.trusted.get(&exe)?;
        Some(if SUPERVISORS.contains(&trusted.name.as_str()) {
            "a service manager or session daemon (it runs others)"
        } else {
            "named by --protect"
        })
    }

    /// When `node` is named like a service manager or a protected program
    /// but runs another executable: why it was not spared, for its records.
    pub fn impostor(&self, node: &LineageNode) -> Option<String> {
        let comm = node.comm.to_string();
        let (names, _) = trusted_names(&self.listed);
        if !names
            .iter()
            .any(|n| n.as_bytes()[..n.len().min(15)] == *comm.as_bytes())
        {
            return None;
        }
        if self.why(node).is_some() {
            return None;
        }
        Some(format!(
            "named {comm:?}, but its executable is not a trusted {comm} (a name is the \
             user's to choose; guard trusts root-owned executables by inode)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::kernel::decode::Comm;

    fn node(tgid: u32, comm: &str, cgroup: &str, kernel_thread: bool) -> LineageNode {
        LineageNode {
            tgid,
            parent: None,
            comm: Comm::from_str_lossy(comm),
            alive: true,
            born_ns: 0,
            kernel_thread,
            exe: None,
            cmdline: None,
            depth: 0,
            cgroups: Arc::from(vec![Some(Arc::<str>::from(cgroup))]),
            children: 0,
        }
    }

    /// A host where pid 501 runs the trusted sshd (inode 7), 502 and 503
    /// run bash (inode 9) under the names sshd and postgres, and 601 runs
    /// the trusted postgres (inode 8).
    fn fake_host(listed: Vec<Protected>, scope: Scope) -> Protection {
        use std::collections::BTreeMap;
        let id = |ino| ExeId {
            ino,
            dev: 1,
            reserved: 0,
        };
        let trusted = TrustedExes::new(BTreeMap::from([
            (
                id(7),
                crate::host::identity::TrustedExe {
                    name: "sshd".into(),
                    path: "/usr/sbin/sshd".into(),
                },
            ),
            (
                id(8),
                crate::host::identity::TrustedExe {
                    name: "postgres".into(),
                    path: "/usr/lib/postgresql/bin/postgres".into(),
                },
            ),
        ]));
        Protection::new(HashSet::from([4242, 4000]), listed, scope, trusted).with_exe_reader(
            Arc::new(move |tgid| match tgid {
                501 => Some(id(7)),
                601 => Some(id(8)),
                _ => Some(id(9)),
            }),
        )
    }

    #[test]
    fn never_pid_1_kernel_threads_guard_or_outside_scope() {
        let scope = Scope {
            cgroups: vec![(0, "/sys/fs/cgroup/pids/jobs".into())],
        };
        let p = fake_host(vec![], scope);
        let inside = "/sys/fs/cgroup/pids/jobs/a";
        assert_eq!(p.why(&node(1, "init", inside, false)), Some("PID 1"));
        assert_eq!(
            p.why(&node(77, "kworker/0:1", inside, true)),
            Some("a kernel thread")
        );
        assert_eq!(
            p.why(&node(4000, "sudo", inside, false)),
            Some("guard itself or its ancestor")
        );
        assert_eq!(
            p.why(&node(500, "bash", "/sys/fs/cgroup/pids/other", false)),
            Some("outside the --cgroup scope")
        );
        assert_eq!(p.why(&node(500, "bash", inside, false)), None);
        assert!(
            p.why(&node(501, "sshd", inside, false))
                .is_some_and(|w| w.contains("service manager"))
        );
    }

    #[test]
    fn a_name_is_no_identity() {
        let p = fake_host(vec![], Scope::default());
        let cg = "/sys/fs/cgroup/pids";
        // bash named sshd is an ordinary process, and says why.
        let fake = node(502, "sshd", cg, false);
        assert_eq!(p.why(&fake), None);
        assert!(
            p.impostor(&fake)
                .is_some_and(|w| w.contains("not a trusted sshd"))
        );
        // The real one is spared, and no impostor; an unrelated name neither.
        assert!(p.impostor(&node(501, "sshd", cg, false)).is_none());
        assert!(p.impostor(&node(503, "bash", cg, false)).is_none());
        // The trusted executable under another name is still itself.
        assert!(p.why(&node(501, "renamed", cg, false)).is_some());
        // A dead process runs nothing.
        let mut ghost = node(501, "sshd", cg, false);
        ghost.alive = false;
        assert_eq!(p.why(&ghost), None);
    }

    #[test]
    fn protect_by_pid_program_and_cgroup() {
        let listed = vec![
            parse_protected("600").expect("pid"),
            parse_protected("postgres").expect("program"),
            Protected::Cgroup("/sys/fs/cgroup/pids/db".into()),
        ];
        let p = fake_host(listed, Scope::default());
        let cg = "/sys/fs/cgroup/pids";
        assert!(p.why(&node(600, "x", cg, false)).is_some());
        assert_eq!(
            p.why(&node(601, "postgres", cg, false)),
            Some("named by --protect")
        );
        assert_eq!(p.why(&node(503, "postgres", cg, false)), None);
        assert!(p.impostor(&node(503, "postgres", cg, false)).is_some());
        assert!(
            p.why(&node(602, "x", "/sys/fs/cgroup/pids/db/replica", false))
                .is_some()
        );
        assert!(
            p.why(&node(603, "x", "/sys/fs/cgroup/pids/dbx", false))
                .is_none()
        );
        assert!(parse_protected("bin/sshd").is_err());
        let tmp = std::env::temp_dir().join(format!("guard-protect-{}", std::process::id()));
        std::fs::write(&tmp, "#!/bin/sh\n").expect("write");
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let err = parse_protected(tmp.to_str().expect("utf8")).expect_err("under /tmp");
        let _ = std::fs::remove_file(&tmp);
        assert!(err.contains("writable by anyone"), "{err}");
        assert_eq!(
            parse_protected("/usr/bin/sleep"),
            Ok(Protected::Exe(
                std::fs::canonicalize("/usr/bin/sleep").expect("sleep")
            ))
        );
    }
}
