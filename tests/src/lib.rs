//! Harness for guard's root integration tests (and `cargo xtask bench`):
//! cgroups of the test's own that are always cleaned up, the real agent as a
//! child process, and the workload binary.
//!
//! Everything here panics with context rather than returning errors: a
//! failed set-up is a failed test, and `Drop` restores the machine.

use std::{
    ffi::CString,
    io::{BufRead as _, BufReader},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use serde_json::Value;

/// The workspace's target directory.
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target")
}

/// The agent binary: $GUARD_BIN (set by `cargo xtask test`), else the
/// release build.
pub fn guard_bin() -> PathBuf {
    let path = std::env::var_os("GUARD_BIN")
        .map_or_else(|| target_dir().join("release/guard"), PathBuf::from);
    assert!(
        path.exists(),
        "{} does not exist: run the tests with `cargo xtask test`",
        path.display()
    );
    path
}

/// The workload helper built from this crate.
pub fn workload_bin() -> PathBuf {
    let path = match option_env!("CARGO_BIN_EXE_guard-workload") {
        Some(p) => PathBuf::from(p),
        None => target_dir().join("release/guard-workload"),
    };
    assert!(
        path.exists(),
        "{} does not exist: run the tests with `cargo xtask test`",
        path.display()
    );
    path
}

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
            let procs: Vec<u32> = self
                .dirs
                .iter()
                .flat_map(|d| {
                    std::fs::read_to_string(d.join("cgroup.procs"))
                        .unwrap_or_default()
                        .lines()
                        .filter_map(|l| l.parse().ok())
                        .collect::<Vec<u32>>()
                })
                .collect();
            if procs.is_empty() || Instant::now() > deadline {
                return;
            }
            for pid in procs {
                // SAFETY: kill has no memory effects; the pid is a member of
                // this test's own cgroup.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        self.kill_all();
        for dir in &self.dirs {
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

/// The agent running as a child process with `--json`.
pub struct Agent {
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    /// Records read by `wait_for` so far (after `start`).
    seen: Vec<Value>,
    stderr: Arc<Mutex<String>>,
    /// The `start` record.
    pub start: Value,
}

/// What a stopped agent printed.
pub struct Stopped {
    pub records: Vec<Value>,
    pub status: ExitStatus,
    pub stderr: String,
}

impl Stopped {
    pub fn summary(&self) -> &Value {
        self.records
            .iter()
            .rev()
            .find(|r| r["kind"] == "summary")
            .unwrap_or_else(|| panic!("no summary record; stderr:\n{}", self.stderr))
    }

    /// Records of `kind`.
    pub fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.records.iter().filter(move |r| r["kind"] == kind)
    }
}

impl Agent {
    /// Starts `guard --json ARGS` and waits for its `start` record.
    pub fn start(args: &[&str]) -> Self {
        let mut child = Command::new(guard_bin())
            .arg("--json")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn guard");
        let stdout = child.stdout.take().expect("stdout");
        let stderr_pipe = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr_pipe).lines().map_while(Result::ok) {
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&line);
                    s.push('\n');
                }
            }
        });
        let mut agent = Agent {
            child: Some(child),
            lines,
            seen: Vec::new(),
            stderr,
            start: Value::Null,
        };
        agent.start = agent.wait_for(Duration::from_secs(60), "start", |r| r["kind"] == "start");
        agent.seen.clear();
        agent
    }

    /// The agent's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Scheduling policy (`/proc/PID/task/TID/stat` field 41) of each of
    /// the agent's threads, by thread name.
    pub fn thread_policies(&self) -> Vec<(String, u32)> {
        let dir = format!("/proc/{}/task", self.pid());
        std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{dir}: {e}"))
            .filter_map(|t| {
                let stat = std::fs::read_to_string(t.ok()?.path().join("stat")).ok()?;
                let name = stat.get(stat.find('(')? + 1..stat.rfind(')')?)?.to_owned();
                let rest: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split(' ').collect();
                // Field 41 overall; the fields after ")" start at field 3.
                Some((name, rest.get(41 - 3)?.parse().ok()?))
            })
            .collect()
    }

    /// Sends `signal` to the running agent (SIGSTOP freezes it whole).
    pub fn signal(&self, signal: i32) {
        let child = self.child.as_ref().expect("running");
        // SAFETY: kill has no memory effects; the pid is our child's, not
        // yet waited for.
        unsafe { libc::kill(child.id() as i32, signal) };
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Sends `signal` and collects everything it printed until it exits.
    pub fn stop_with(mut self, signal: i32) -> Stopped {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill has no memory effects; the pid is our child's.
        unsafe { libc::kill(child.id() as i32, signal) };
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "guard did not exit within 30 s of signal {signal}; stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut records = vec![self.start.clone()];
        records.append(&mut self.seen);
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            records.push(
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad JSON {line:?}: {e}")),
            );
        }
        // Let the stderr thread finish.
        std::thread::sleep(Duration::from_millis(50));
        Stopped {
            records,
            status,
            stderr: self.stderr(),
        }
    }

    /// Reads records until one satisfies `pred` (returned; it and all before
    /// it are kept for `stop`), panicking after `timeout`.
    pub fn wait_for(
        &mut self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let v: Value = serde_json::from_str(&line)
                        .unwrap_or_else(|e| panic!("bad JSON {line:?}: {e}"));
                    self.seen.push(v.clone());
                    if pred(&v) {
                        return v;
                    }
                }
                Err(_) => panic!(
                    "no record {what} within {timeout:?}; got {} records; stderr:\n{}",
                    self.seen.len(),
                    self.stderr()
                ),
            }
        }
    }

    /// Like `wait_for`, but `None` after `timeout` instead of a panic.
    pub fn try_wait_for(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).ok()?;
            let v: Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad JSON {line:?}: {e}"));
            self.seen.push(v.clone());
            if pred(&v) {
                return Some(v);
            }
        }
    }

    /// SIGINT, the way an operator stops it.
    pub fn stop(self) -> Stopped {
        self.stop_with(libc::SIGINT)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs a command to completion, panicking with its output on failure to
/// start; returns its status and stdout.
pub fn run(cmd: &mut Command) -> (ExitStatus, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Restores a sysctl (a /proc/sys file) to its value at creation on drop.
pub struct SysctlGuard {
    path: PathBuf,
    saved: String,
}

impl SysctlGuard {
    pub fn set(path: &str, value: &str) -> Self {
        let path = PathBuf::from(path);
        let saved = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        std::fs::write(&path, value)
            .unwrap_or_else(|e| panic!("write {value} to {}: {e}", path.display()));
        SysctlGuard {
            path,
            saved: saved.trim().to_owned(),
        }
    }
}

impl Drop for SysctlGuard {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(&self.path, &self.saved) {
            eprintln!(
                "warning: could not restore {} to {}: {e}",
                self.path.display(),
                self.saved
            );
        }
    }
}

/// Runs `f` on drop: clean-up that must happen even when a test panics.
pub struct Defer<F: FnMut()>(pub F);

impl<F: FnMut()> Drop for Defer<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}

/// u64 field of a record, panicking with the record when missing.
pub fn num(record: &Value, field: &str) -> u64 {
    record[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no numeric {field} in {record}"))
}

/// A loop-mounted ext4 image, frozen on request; unfrozen, unmounted and
/// detached on drop.
pub struct FrozenFs {
    image: PathBuf,
    pub mount: PathBuf,
    device: String,
}

impl FrozenFs {
    /// A 16 MiB ext4 image on a loop device, mounted under the temp dir.
    pub fn create() -> Self {
        let base = std::env::temp_dir().join(format!("guard-test-hang-{}", std::process::id()));
        let image = base.with_extension("img");
        let mount = base.with_extension("mnt");
        std::fs::create_dir_all(&mount).expect("mkdir mount point");
        let file = std::fs::File::create(&image).expect("create image");
        file.set_len(16 << 20).expect("size image");
        let (status, _) = run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image));
        assert!(status.success(), "mkfs.ext4 failed");
        let (status, device) = run(Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&image));
        assert!(status.success(), "losetup failed");
        let fs = FrozenFs {
            image,
            mount,
            device: device.trim().to_owned(),
        };
        let (status, _) = run(Command::new("mount").arg(&fs.device).arg(&fs.mount));
        assert!(status.success(), "mount failed");
        fs
    }

    pub fn freeze(&self) {
        let (status, _) = run(Command::new("fsfreeze").arg("-f").arg(&self.mount));
        assert!(status.success(), "fsfreeze -f failed");
    }

    pub fn thaw(&self) {
        let _ = Command::new("fsfreeze").arg("-u").arg(&self.mount).output();
    }
}

impl Drop for FrozenFs {
    fn drop(&mut self) {
        self.thaw();
        let _ = Command::new("umount").arg(&self.mount).output();
        let _ = Command::new("losetup").arg("-d").arg(&self.device).output();
        let _ = std::fs::remove_dir(&self.mount);
        let _ = std::fs::remove_file(&self.image);
    }
}
