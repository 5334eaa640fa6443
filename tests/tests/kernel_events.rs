//! The rarer kernel events, provoked for real: an OOM kill inside a memory
//! cgroup with a small limit, and a task hung on a frozen filesystem.

use std::{path::PathBuf, process::Command, time::Duration};

use guard_tests::{Agent, Defer, SysctlGuard, TestCgroup, num, run};

#[test]
fn oom_kill_names_the_victim_its_rss_and_cgroup() {
    const LIMIT: u64 = 64 << 20;
    let cg = TestCgroup::new("oom", 16, LIMIT);
    let memory = cg
        .memory_dir()
        .canonicalize()
        .expect("canonical")
        .to_string_lossy()
        .into_owned();
    // The first --cgroup also picks the hierarchy events show: memory here.
    let agent = Agent::start(&["--cgroup", &memory, "--events", "oom_kill,exit"]);
    let mut hog = cg.workload(&["alloc", "256", "5"]);
    let child = hog
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn hog");
    let hog_pid = u64::from(child.id());
    let output = child.wait_with_output().expect("wait hog");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&output.status),
        Some(libc::SIGKILL),
        "the hog must die by the OOM killer"
    );
    let stopped = agent.stop();

    let ooms: Vec<_> = stopped.of_kind("oom_kill").collect();
    assert_eq!(ooms.len(), 1, "{ooms:?}\n{}", stopped.stderr);
    let oom = ooms[0];
    assert_eq!(num(oom, "pid"), hog_pid, "{oom}");
    assert_eq!(oom["comm"], "guard-workload", "{oom}");
    assert_eq!(oom["cgroup"], memory.as_str(), "{oom}");
    // The victim's anonymous memory is what filled the limit.
    let anon = num(oom, "anon_rss_kb");
    assert!(
        anon > (LIMIT >> 10) / 2 && anon <= LIMIT >> 10,
        "anon_rss_kb {anon} vs a {} kB limit",
        LIMIT >> 10
    );
    assert!(num(oom, "total_vm_kb") >= anon, "{oom}");
    assert_eq!(oom["oom_score_adj"], 0, "{oom}");
    // The allocation that ran the OOM killer was the hog's own.
    assert_eq!(num(oom, "trigger_tgid"), hog_pid, "{oom}");
    let exit = stopped
        .of_kind("exit")
        .find(|r| num(r, "pid") == hog_pid)
        .expect("the hog's exit");
    assert_eq!(exit["signal"], "SIGKILL", "{exit}");
}

/// A loop-mounted ext4 image, frozen on request; unfrozen, unmounted and
/// detached on drop.
struct FrozenFs {
    image: PathBuf,
    mount: PathBuf,
    device: String,
}

impl FrozenFs {
    fn new() -> Self {
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

    fn freeze(&self) {
        let (status, _) = run(Command::new("fsfreeze").arg("-f").arg(&self.mount));
        assert!(status.success(), "fsfreeze -f failed");
    }

    fn thaw(&self) {
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

#[test]
fn hung_task_is_reported_for_a_writer_blocked_on_a_frozen_fs() {
    let panic_on_hang =
        std::fs::read_to_string("/proc/sys/kernel/hung_task_panic").unwrap_or_default();
    assert_eq!(
        panic_on_hang.trim(),
        "0",
        "kernel.hung_task_panic is set: a hung task would panic this machine"
    );
    let fs = FrozenFs::new();
    let cg = TestCgroup::new("hang", 16, 128 << 20);
    // Declared after `fs` and `cg`, so dropped first: thaw before the
    // cgroup kills the (then runnable) writer and the image goes away.
    let _thaw = Defer(|| fs.thaw());
    let _timeout = SysctlGuard::set("/proc/sys/kernel/hung_task_timeout_secs", "2");

    let mut agent = Agent::start(&[
        "--cgroup",
        cg.pids_dir().to_str().expect("utf8"),
        "--events",
        "hung_task,exit",
    ]);
    fs.freeze();
    let target = fs.mount.join("file");
    let mut writer = cg.command("/bin/sh");
    writer
        .arg("-c")
        .arg(format!("echo blocked > {}", target.display()));
    let writer = writer.spawn().expect("spawn writer");
    let writer_pid = u64::from(writer.id());

    let hung = agent.wait_for(Duration::from_secs(30), "hung_task for the writer", |r| {
        r["kind"] == "hung_task" && r["tgid"].as_u64() == Some(writer_pid)
    });
    assert_eq!(hung["comm"], "sh", "{hung}");
    assert_eq!(
        hung["cgroup"],
        cg.pids_dir()
            .canonicalize()
            .expect("dir")
            .to_string_lossy()
            .as_ref(),
        "{hung}"
    );
    // The writer is in D state until the filesystem thaws, then finishes.
    let state = std::fs::read_to_string(format!("/proc/{writer_pid}/stat")).unwrap_or_default();
    assert!(state.contains(") D "), "writer not in D state: {state}");
    fs.thaw();
    let out = writer.wait_with_output().expect("wait writer");
    assert!(out.status.success(), "writer failed after thaw");
    let stopped = agent.stop();
    let exit = stopped
        .of_kind("exit")
        .find(|r| num(r, "pid") == writer_pid)
        .expect("writer's exit");
    assert_eq!(exit["exit_code"], 0);
}
