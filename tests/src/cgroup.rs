//! Cgroups of a test's own: pids and memory limits, always emptied and
//! removed, and what the kernel counted in them.

use std::{
    ffi::CString,
    io::{BufRead as _, BufReader},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::workload_bin;

/// The directory of the calling process's own cgroup in the hierarchy
/// mounted at `mount` with the controller `controller` (v1), so test
/// cgroups nest inside whatever limits the caller already lives under.
fn own_cgroup_dir(mount: &Path, controller: &str) -> PathBuf {
    let text = std::fs::read_to_string("/proc/self/cgroup").expect("read /proc/self/cgroup");
    let rel = text
        .lines()
        .find_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
            let hit = if controller.is_empty() {
                ctrls.is_empty()
            } else {
                ctrls.split(',').any(|c| c == controller)
            };
            hit.then(|| path.to_owned())
        })
        .unwrap_or_else(|| "/".into());
    mount.join(rel.trim_start_matches('/'))
}

/// A cgroup (in the pids and memory hierarchies) for one test, with a pids
/// limit and a memory limit. Dropping it kills every process in it and
/// removes it, also when the test failed or panicked.
pub struct TestCgroup {
    /// Directories to join and to clean up, pids first.
    dirs: Vec<PathBuf>,
    pids: PathBuf,
    memory: PathBuf,
}

impl TestCgroup {
    /// Makes `guard-test-<name>-<pid>` with `pids.max` and a memory limit.
    pub fn new(name: &str, pids_max: u32, memory_max: u64) -> Self {
        let leaf = format!("guard-test-{name}-{}", std::process::id());
        let v1_pids = Path::new("/sys/fs/cgroup/pids");
        if v1_pids.join("cgroup.procs").exists() {
            let pids = own_cgroup_dir(v1_pids, "pids").join(&leaf);
            let memory = own_cgroup_dir(Path::new("/sys/fs/cgroup/memory"), "memory").join(&leaf);
            for dir in [&pids, &memory] {
                std::fs::create_dir(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
            }
            let cg = TestCgroup {
                dirs: vec![pids.clone(), memory.clone()],
                pids,
                memory,
            };
            cg.write(&cg.pids, "pids.max", &pids_max.to_string());
            cg.write(&cg.memory, "memory.limit_in_bytes", &memory_max.to_string());
            cg
        } else {
            // Pure v2: a child of the root, where controllers can be enabled.
            let root = Path::new("/sys/fs/cgroup");
            let _ = std::fs::write(root.join("cgroup.subtree_control"), "+pids +memory");
            let dir = root.join(&leaf);
            std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
            let cg = TestCgroup {
                dirs: vec![dir.clone()],
                pids: dir.clone(),
                memory: dir,
            };
            cg.write(&cg.pids, "pids.max", &pids_max.to_string());
            cg.write(&cg.memory, "memory.max", &memory_max.to_string());
            cg.write(&cg.memory, "memory.swap.max", "0");
            cg
        }
    }

    /// On a hybrid host, also a directory in the v2 hierarchy mounted at
    /// /sys/fs/cgroup/unified (no controllers there: membership only), which
    /// members join too; `None` elsewhere.
    pub fn with_v2_dir(mut self) -> (Self, Option<PathBuf>) {
        let unified = Path::new("/sys/fs/cgroup/unified");
        if self.dirs.len() < 2 || !unified.join("cgroup.procs").exists() {
            return (self, None);
        }
        let leaf = self.pids.file_name().expect("a leaf").to_owned();
        let dir = own_cgroup_dir(unified, "").join(leaf);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        self.dirs.push(dir.clone());
        (self, Some(dir))
    }

    /// A cgroup nested at `rel` (e.g. `kubepods/burstable/pod<uid>/<id>`)
    /// in each of this one's hierarchies, with its own `pids.max`. It is
    /// emptied and removed on drop; the directories between are removed
    /// with this one.
    pub fn child(&self, rel: &str, pids_max: u32) -> TestCgroup {
        let mut dirs = Vec::new();
        for base in &self.dirs {
            let dir = base.join(rel);
            std::fs::create_dir_all(&dir)
                .unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
            dirs.push(dir);
        }
        let child = TestCgroup {
            pids: self.pids.join(rel),
            memory: self.memory.join(rel),
            dirs,
        };
        child.write(&child.pids, "pids.max", &pids_max.to_string());
        child
    }

    fn write(&self, dir: &Path, file: &str, value: &str) {
        let path = dir.join(file);
        if let Err(e) = std::fs::write(&path, value) {
            panic!("writing {value} to {}: {e}", path.display());
        }
    }

    /// The pids-controller directory (v1), or the v2 directory.
    pub fn pids_dir(&self) -> &Path {
        &self.pids
    }

    /// The memory-controller directory (v1), or the v2 directory.
    pub fn memory_dir(&self) -> &Path {
        &self.memory
    }

    /// Live members (tgids) by the pids hierarchy.
    pub fn procs(&self) -> Vec<u32> {
        std::fs::read_to_string(self.pids.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.parse().ok())
            .collect()
    }

    /// Tasks in the cgroup now (`pids.current`: threads and zombies
    /// included).
    pub fn pids_current(&self) -> u64 {
        let path = self.pids.join("pids.current");
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// How often pids.max refused a fork (`max N` in pids.events).
    pub fn pids_refused(&self) -> u64 {
        let path = self.pids.join("pids.events");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        text.lines()
            .find_map(|l| l.strip_prefix("max "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no max line in {}", path.display()))
    }

    /// OOM kills in the memory cgroup: v1 `memory.oom_control`'s
    /// `oom_kill`, v2 `memory.events`'.
    pub fn oom_kills(&self) -> u64 {
        ["memory.oom_control", "memory.events"]
            .iter()
            .filter_map(|f| std::fs::read_to_string(self.memory.join(f)).ok())
            .find_map(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse::<u64>().ok())
            })
            .expect("no oom_kill counter in the memory cgroup")
    }

    /// (pid, comm, state) of every member.
    pub fn members(&self) -> Vec<(u32, String, char)> {
        self.procs()
            .into_iter()
            .filter_map(|pid| {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                let comm = stat.get(stat.find('(')? + 1..stat.rfind(')')?)?.to_owned();
                let state = stat.get(stat.rfind(')')? + 2..)?.chars().next()?;
                Some((pid, comm, state))
            })
            .collect()
    }

    /// Live (not zombie) members named `comm`.
    pub fn live_named(&self, comm: &str) -> usize {
        self.members()
            .iter()
            .filter(|m| m.1 == comm && m.2 != 'Z')
            .count()
    }

    /// Waits until no live member is named `comm`, panicking after `within`.
    pub fn wait_until_gone(&self, comm: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let left: Vec<_> = self
                .members()
                .into_iter()
                .filter(|m| m.1 == comm && m.2 != 'Z')
                .collect();
            if left.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} live {comm} processes left after {within:?}, the first: {:?}",
                left.len(),
                &left[..left.len().min(10)]
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts `bash -c SCRIPT` in this cgroup, its stdio closed.
    pub fn spawn_bash(&self, script: &str) -> Child {
        self.command("/bin/bash")
            .args(["-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting bash -c {script:?}: {e}"))
    }

    /// A command that joins this cgroup (every hierarchy) before it execs.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        let files: Vec<CString> = self
            .dirs
            .iter()
            .map(|d| {
                CString::new(d.join("cgroup.procs").into_os_string().into_encoded_bytes())
                    .expect("no NUL in path")
            })
            .collect();
        // SAFETY: the closure only calls async-signal-safe functions (open,
        // write, close) on memory allocated before fork.
        unsafe {
            cmd.pre_exec(move || {
                for file in &files {
                    let fd = libc::open(file.as_ptr(), libc::O_WRONLY);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                    libc::close(fd);
                    if written != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        cmd
    }

    /// A command running the workload helper with `args`, in this cgroup.
    pub fn workload(&self, args: &[&str]) -> Command {
        let mut cmd = self.command(workload_bin());
        cmd.args(args);
        cmd
    }

    /// Starts the workload helper with `args` in this cgroup and returns once
    /// it printed its first line (it is then past exec, in the cgroup).
    pub fn spawn_ready(&self, args: &[&str]) -> Child {
        let mut child = self
            .workload(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn workload");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read workload line");
        assert!(!line.is_empty(), "workload {args:?} printed nothing");
        child
    }

    /// SIGKILLs every member until none is left (members may fork while
    /// being killed; the pids limit bounds how many there can be).
    pub fn kill_all(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // Through pidfds, checked members: a pid read here may be
            // reused by the time it is signalled.
            let listed: usize = self.dirs.iter().map(|d| crate::kill_members(d)).sum();
            if listed == 0 || Instant::now() > deadline {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The directories below `dir`, deepest first.
fn descendants(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                found.push(entry.path());
                stack.push(entry.path());
            }
        }
    }
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        self.kill_all();
        for dir in &self.dirs {
            // What children left between (their own directories are gone).
            for below in descendants(dir) {
                let _ = std::fs::remove_dir(&below);
            }
            // Members that were just killed may take a moment to leave.
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::fs::remove_dir(dir).is_err() && dir.exists() && Instant::now() < deadline {
                self.kill_all();
                std::thread::sleep(Duration::from_millis(20));
            }
            if dir.exists() {
                eprintln!("warning: could not remove {}", dir.display());
            }
        }
    }
}
