//! Harness for guard's root integration tests (and `cargo xtask bench`):
//! cgroups of the test's own that are always cleaned up, the real agent as a
//! child process, and the workload binary.
//!
//! Everything here panics with context rather than returning errors: a
//! failed set-up is a failed test, and `Drop` restores the machine.

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
};

use serde_json::Value;

mod agent;
pub mod bombs;
mod cgroup;
pub mod schema;

pub use self::{
    agent::{Agent, AgentDir, Stopped, read_report},
    cgroup::TestCgroup,
};

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

/// The workload helper built from this crate ($GUARD_WORKLOAD where the
/// build tree is not at hand: inside a test guest).
pub fn workload_bin() -> PathBuf {
    let path = match (
        std::env::var_os("GUARD_WORKLOAD"),
        option_env!("CARGO_BIN_EXE_guard-workload"),
    ) {
        (Some(p), _) => PathBuf::from(p),
        (None, Some(p)) => PathBuf::from(p),
        (None, None) => target_dir().join("release/guard-workload"),
    };
    assert!(
        path.exists(),
        "{} does not exist: run the tests with `cargo xtask test`",
        path.display()
    );
    path
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

/// SIGKILLs the process `pid` (a child of the test's own) on drop, if it
/// is still there and still its child: a test that fails leaves no agent
/// running, and a pid reused since (the child waited for) is left alone.
pub fn kill_on_drop(pid: u32) -> Defer<impl FnMut()> {
    Defer(move || {
        let me = std::process::id().to_string();
        signal_if(pid, libc::SIGKILL, || {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .unwrap_or_default()
                .lines()
                .find_map(|l| l.strip_prefix("PPid:"))
                .is_some_and(|ppid| ppid.trim() == me)
        });
    })
}

/// Sends `signal` to the process `pid` only if `is_ours` (which reads
/// `/proc/PID/...`) says so, without a race against pid reuse: the signal
/// goes through a pidfd opened before the check, so it reaches the process
/// checked or, when that one is gone by then, nobody. A test harness that
/// read a pid and signalled it a moment later could otherwise kill whoever
/// got the pid meanwhile (itself included: kill(2) on a thread id signals
/// its process).
/// Returns whether the signal was sent.
pub fn signal_if(pid: u32, signal: i32, is_ours: impl FnOnce() -> bool) -> bool {
    // SAFETY: pidfd_open takes a pid and flags; it returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return false;
    }
    // SAFETY: `fd` is a descriptor we own from here on.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
    // While the pidfd's process lives, /proc/PID is that process; if it
    // has died, the signal below fails with ESRCH whatever the check read.
    if !is_ours() {
        return false;
    }
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    // SAFETY: the fd is a pidfd we own; a null siginfo is allowed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            raw,
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    rc == 0
}

/// SIGKILLs every process listed in `dir`'s `cgroup.procs` that is still a
/// member of a cgroup named like `dir` when signalled (see [`signal_if`]).
/// Returns how many were listed.
pub fn kill_members(dir: &std::path::Path) -> usize {
    use std::os::unix::ffi::OsStrExt as _;
    // Bytes: a cgroup's name need not be UTF-8.
    let leaf = dir.file_name().map(|l| l.as_bytes()).unwrap_or_default();
    assert!(
        !leaf.is_empty(),
        "kill_members: {} names no cgroup",
        dir.display()
    );
    let procs: Vec<u32> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect();
    for &pid in &procs {
        let _ = signal_if(pid, libc::SIGKILL, || {
            std::fs::read(format!("/proc/{pid}/cgroup"))
                .unwrap_or_default()
                .split(|&b| b == b'\n')
                .any(|l| l.split(|&b| b == b'/').any(|part| part == leaf))
        });
    }
    procs.len()
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
        // e2fsprogs' mkfs.ext4, or busybox's mke2fs inside a test guest
        // (ext2, which the ext4 driver mounts and freezes alike).
        let made = if has_tool("mkfs.ext4") {
            run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image)).0
        } else {
            run(Command::new("mke2fs").arg("-F").arg(&image)).0
        };
        assert!(
            made.success(),
            "making a file system on {} failed",
            image.display()
        );
        // A loop mount: the loop device is set up, and released at
        // unmount, by mount itself (util-linux's and busybox's alike).
        let fs = FrozenFs { image, mount };
        let (status, _) = run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&fs.image)
            .arg(&fs.mount));
        assert!(status.success(), "mount -o loop failed");
        fs
    }

    pub fn freeze(&self) {
        let (status, _) = run(Command::new("fsfreeze")
            .arg(freeze_flag(true))
            .arg(&self.mount));
        assert!(status.success(), "fsfreeze failed");
    }

    pub fn thaw(&self) {
        let _ = Command::new("fsfreeze")
            .arg(freeze_flag(false))
            .arg(&self.mount)
            .output();
    }
}

/// Whether `tool` is on this host's PATH directories.
fn has_tool(tool: &str) -> bool {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .any(|d| Path::new(d).join(tool).exists())
}

/// util-linux's fsfreeze takes -f/-u; busybox's only --freeze/--unfreeze,
/// which util-linux takes too.
fn freeze_flag(freeze: bool) -> &'static str {
    if freeze { "--freeze" } else { "--unfreeze" }
}

impl Drop for FrozenFs {
    fn drop(&mut self) {
        self.thaw();
        let _ = Command::new("umount").arg(&self.mount).output();
        let _ = std::fs::remove_dir(&self.mount);
        let _ = std::fs::remove_file(&self.image);
    }
}

/// The hostile local user of the trust tests: uid and gid 65534 (nobody),
/// no groups, no capabilities, and a temp dir of its own that is removed
/// (with everything it made there) on drop.
pub struct Unprivileged {
    pub dir: PathBuf,
}

impl Unprivileged {
    pub const UID: u32 = 65534;

    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("guard-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        std::os::unix::fs::chown(&dir, Some(Self::UID), Some(Self::UID))
            .unwrap_or_else(|e| panic!("chown {}: {e}", dir.display()));
        Self { dir }
    }

    /// `setpriv` as the user, running `program` with `args`.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(program)
        .current_dir(&self.dir);
        cmd
    }

    /// Runs `sh -c script` as the user, to completion; panics on failure.
    pub fn sh(&self, script: &str) {
        let out = self
            .command("/bin/sh")
            .args(["-c", script])
            .output()
            .unwrap_or_else(|e| panic!("setpriv sh -c {script:?}: {e}"));
        assert!(
            out.status.success(),
            "as uid 65534, `{script}` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Unprivileged {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A directory only root can write, for files guard must trust (a config,
/// a hook's script): under /run, mode 0700; removed on drop.
pub struct RootDir {
    pub path: PathBuf,
}

impl RootDir {
    pub fn new(name: &str) -> Self {
        let path = Path::new("/run").join(format!("guard-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
        Self { path }
    }
}

impl Drop for RootDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Flags for an agent a test starts itself (not through [`Agent`]): no
/// incident reports and no stream socket outside the test's own
/// directories.
pub const NO_REPORTS: [&str; 4] = ["--incident-dir", "", "--socket", ""];
