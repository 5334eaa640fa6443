//! What guard never signals, whatever the configuration: PID 1, kernel
//! threads, guard itself and its ancestors, service managers and session
//! daemons (by comm, [`SUPERVISORS`]), anything outside the scope, and what
//! `--protect` names. Detectors use it to choose an offender; `act`
//! checks it again before every signal.

use std::collections::HashSet;

use std::sync::Arc;

use crate::{
    cgroup::{Hierarchies, Interner, is_within},
    decode::Comm,
    proctable::LineageNode,
    scope::Scope,
};

/// Service managers and session daemons, by comm: never signalled, so that
/// an explosion under one of them is pinned on the child that started it
/// (the fork probe roots a subtree at the first unprotected forker) and a
/// crash loop never stops the manager of many services. Without this, the
/// topmost unprotected ancestor of a bomb started in an ssh session is
/// sshd itself. PID 1 is protected whatever its name.
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

/// One `--protect` value: a pid, a cgroup directory (starts with `/`), or a
/// comm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Protected {
    Pid(u32),
    Cgroup(String),
    Comm(String),
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
        let dir = std::fs::canonicalize(text).map_err(|e| format!("--protect {text}: {e}"))?;
        if !dir.join("cgroup.procs").is_file() {
            return Err(format!(
                "--protect {text}: not a cgroup directory (no cgroup.procs in it); give a pid, \
                 a comm, or a directory under /sys/fs/cgroup"
            ));
        }
        return Ok(Protected::Cgroup(dir.to_string_lossy().into_owned()));
    }
    if text.len() > 15 {
        return Err(format!(
            "--protect {text}: a comm is at most 15 bytes (the kernel cuts longer names)"
        ));
    }
    Ok(Protected::Comm(text.to_owned()))
}

#[derive(Clone, Debug, Default)]
pub struct Protection {
    /// guard's own tgid and its ancestors' at start.
    guard_chain: HashSet<u32>,
    listed: Vec<Protected>,
    scope: Scope,
}

impl Protection {
    pub fn new(guard_chain: HashSet<u32>, listed: Vec<Protected>, scope: Scope) -> Self {
        Self {
            guard_chain,
            listed,
            scope,
        }
    }

    /// guard's tgid and every ancestor's, read from /proc.
    pub fn own_chain() -> HashSet<u32> {
        let mut chain = HashSet::new();
        let mut pid = std::process::id();
        while pid > 1 && chain.insert(pid) {
            match crate::procfs::stat(pid).map(|s| s.ppid) {
                Some(p) => pid = p,
                None => break,
            }
        }
        chain
    }

    /// Why the process `tgid` must not be signalled, judged on what it is
    /// now (/proc): its comm may have changed by exec since guard last saw
    /// it, and a tag it inherited in the kernel does not know about
    /// `--protect`. `None` also when it is gone (nothing to signal).
    pub fn why_now(&self, tgid: u32, hierarchies: &Hierarchies) -> Option<&'static str> {
        let stat = crate::procfs::stat(tgid)?;
        let (comm, flags) = (stat.comm.as_str(), stat.flags);
        let needs_cgroups = !self.scope.cgroups.is_empty()
            || self
                .listed
                .iter()
                .any(|p| matches!(p, Protected::Cgroup(_)));
        let cgroups = if needs_cgroups {
            let text = std::fs::read_to_string(format!("/proc/{tgid}/cgroup")).unwrap_or_default();
            hierarchies.set_from_proc(&text, &mut Interner::default())
        } else {
            Arc::from(Vec::new())
        };
        let node = LineageNode {
            tgid,
            parent: None,
            comm: Comm::from_str_lossy(comm),
            alive: true,
            born_ns: 0,
            kernel_thread: crate::procfs::is_kernel_thread(flags),
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
        if SUPERVISORS
            .iter()
            .any(|s| node.comm.as_bytes() == s.as_bytes())
        {
            return Some("a service manager or session daemon (it runs others)");
        }
        for p in &self.listed {
            let hit = match p {
                Protected::Pid(pid) => node.tgid == *pid,
                Protected::Comm(comm) => node.comm.as_bytes() == comm.as_bytes(),
                Protected::Cgroup(dir) => {
                    node.cgroups.iter().flatten().any(|own| is_within(own, dir))
                }
            };
            if hit {
                return Some("named by --protect");
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::decode::Comm;

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

    #[test]
    fn never_pid_1_kernel_threads_guard_or_outside_scope() {
        let scope = Scope {
            cgroups: vec![(0, "/sys/fs/cgroup/pids/jobs".into())],
        };
        let p = Protection::new(HashSet::from([4242, 4000]), vec![], scope);
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
        assert!(
            p.why(&node(502, "containerd-shim", inside, false))
                .is_some()
        );
    }

    #[test]
    fn protect_by_pid_comm_and_cgroup() {
        let listed = vec![
            parse_protected("600").expect("pid"),
            parse_protected("postgres").expect("comm"),
            Protected::Cgroup("/sys/fs/cgroup/pids/db".into()),
        ];
        let p = Protection::new(HashSet::new(), listed, Scope::default());
        assert!(
            p.why(&node(600, "x", "/sys/fs/cgroup/pids", false))
                .is_some()
        );
        assert!(
            p.why(&node(601, "postgres", "/sys/fs/cgroup/pids", false))
                .is_some()
        );
        assert!(
            p.why(&node(602, "x", "/sys/fs/cgroup/pids/db/replica", false))
                .is_some()
        );
        assert!(
            p.why(&node(603, "x", "/sys/fs/cgroup/pids/dbx", false))
                .is_none()
        );
        assert!(parse_protected("a-very-long-command-name").is_err());
    }
}
