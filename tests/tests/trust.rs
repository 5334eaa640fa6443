//! Trust: what an ordinary local user (uid 65534, no capabilities, a temp
//! dir of its own) can do to a root guard. One test per hole of the trust
//! issue: a forged name, a config or hook file the user can write, an
//! output path the user planted, descriptors held open against the metrics
//! port, a subreaper's orphans taken for a crash loop, hooks that outlive
//! their limit, and raw control characters in text output.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use guard_tests::{Agent, TestCgroup, Unprivileged, guard_bin};

const BOMB: &str = ":(){ :|:& };:";

fn scope(cg: &TestCgroup) -> String {
    cg.pids_dir().to_str().expect("utf8").to_owned()
}

/// A fork bomb run by the user through a symlink named `sshd` (so its comm
/// and argv[0] are sshd's) is an ordinary bomb: contained before
/// pids.max, its records saying why the name did not spare it.
#[test]
fn a_bomb_named_sshd_is_not_spared() {
    let user = Unprivileged::new("sshd-name");
    let cg = TestCgroup::new("trust-name", 1000, 512 << 20);
    let mut agent = Agent::start(&[
        "--cgroup",
        &scope(&cg),
        "--fork-action",
        "kill",
        "--events",
        "none",
    ]);
    user.sh("ln -s /bin/bash sshd");
    let link = user.dir.join("sshd");
    let mut bomb = cg
        .command("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(&link)
        .args(["-c", BOMB])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the bomb");
    let action = agent.wait_for(Duration::from_secs(20), "a containing action", |r| {
        r["kind"] == "action" && r["outcome"]["contained"] == true
    });
    let _ = bomb.wait();
    assert_eq!(action["offender"]["comm"], "sshd", "{action}");
    assert!(
        action["offender"]["not_spared_because"]
            .as_str()
            .is_some_and(|w| w.contains("not a trusted sshd")),
        "{action}"
    );
    assert_eq!(
        action["outcome"]["spared"],
        0,
        "{action}\n{}",
        agent.stderr()
    );
    cg.wait_until_gone("sshd", Duration::from_secs(10));
    assert_eq!(cg.pids_refused(), 0, "the bomb reached pids.max");
    drop(agent.stop());
}

/// A port free now on the loopback.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// GET /metrics on `port`: the whole response, or what came of it.
fn scrape(port: u16) -> String {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").expect("request");
    let mut response = String::new();
    let _ = s.read_to_string(&mut response);
    response
}

/// An agent that kills bombs in `cg`, alerts only, metrics on `port`.
fn killing_agent_with_metrics(cg: &TestCgroup, port: u16) -> Agent {
    Agent::start(&[
        "--cgroup",
        &scope(cg),
        "--fork-action",
        "kill",
        "--events",
        "none",
        "--metrics",
        &format!("127.0.0.1:{port}"),
    ])
}

/// Starts `python3 -c script` as the user; returns it and the first line
/// it printed (its sign that it is ready).
fn python_as_user(user: &Unprivileged, script: &str) -> (std::process::Child, String) {
    let mut child = user
        .command("/usr/bin/python3")
        .args(["-c", script])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 as uid 65534");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("python3's first line");
    (child, line)
}

/// Descriptors the process `pid` holds.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Sets this process's soft descriptor limit (the agent inherits it);
/// returns the old limits.
fn set_soft_nofile(soft: u64) -> libc::rlimit {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write structs we own.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut old);
        let new = libc::rlimit {
            rlim_cur: soft,
            rlim_max: old.rlim_max,
        };
        libc::setrlimit(libc::RLIMIT_NOFILE, &raw const new);
    }
    old
}

/// The user holds 1,100 idle connections to the metrics port of an agent
/// started with a service's default soft limit (1024): the agent still
/// contains a bomb before pids.max with a verified outcome, holds few
/// descriptors, closes an idle connection on its own, and still serves a
/// scrape once the flood is gone.
#[test]
fn idle_connections_to_the_metrics_port_neither_blind_nor_bloat_guard() {
    let user = Unprivileged::new("fd-flood");
    let cg = TestCgroup::new("trust-fds", 1000, 512 << 20);
    let port = free_port();
    let old = set_soft_nofile(1024);
    let mut agent = killing_agent_with_metrics(&cg, port);
    // SAFETY: restores this process's limits, read above.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const old) };
    let rss_before = rss_kib(agent.pid());
    // 1,100 connections started at once (non-blocking): what guard does
    // not accept waits in the kernel's queue, or is refused there.
    let flood = format!(
        "import socket, time\n\
         held = []\n\
         for i in range(1100):\n\
         \x20   s = socket.socket()\n\
         \x20   s.setblocking(False)\n\
         \x20   s.connect_ex(('127.0.0.1', {port}))\n\
         \x20   held.append(s)\n\
         time.sleep(3)\n\
         print(len(held), flush=True)\n\
         time.sleep(120)\n"
    );
    let (mut flooder, line) = python_as_user(&user, &flood);
    assert_eq!(line.trim(), "1100", "the flood did not start");
    let agent_fds = fd_count(agent.pid());
    assert!(
        agent_fds < 200,
        "the agent holds {agent_fds} descriptors under the flood"
    );
    // A bomb now: contained before pids.max, with nothing unverified.
    let _ = cg.spawn_bash(BOMB).wait();
    let action = agent.wait_for(Duration::from_secs(20), "a containing action", |r| {
        r["kind"] == "action" && r["outcome"]["contained"] == true
    });
    assert_eq!(action["outcome"]["errors"], 0, "{action}");
    cg.wait_until_gone("bash", Duration::from_secs(10));
    assert_eq!(cg.pids_refused(), 0, "the bomb reached pids.max");
    // Once the flood is gone, an idle connection is closed by guard.
    let _ = flooder.kill();
    let _ = flooder.wait();
    std::thread::sleep(Duration::from_secs(1));
    let mut idle = TcpStream::connect(("127.0.0.1", port));
    if let Ok(idle) = idle.as_mut() {
        idle.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let started = Instant::now();
        let mut buf = [0u8; 64];
        let n = idle.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "guard answered a request never sent");
        assert!(
            started.elapsed() < Duration::from_secs(25),
            "an idle connection stayed open {:?}",
            started.elapsed()
        );
    }
    // And a scrape is served.
    let response = scrape(port);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let rss_after = rss_kib(agent.pid());
    assert!(
        rss_after < rss_before + 32 * 1024,
        "the agent grew from {rss_before} to {rss_after} KiB"
    );
    drop(agent.stop());
}

/// VmRSS of `pid`, KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// `guard --config FILE config`: its exit status and stderr.
fn read_config(file: &std::path::Path, extra: &[&str]) -> (bool, String) {
    let out = Command::new(guard_bin())
        .arg("--config")
        .arg(file)
        .args(extra)
        .arg("config")
        .output()
        .expect("guard config");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A config file the user wrote (its hook would run as root), or one root
/// owns but others may write, or one in a directory others may write, is
/// refused with the reason; `--insecure-config` reads it, loudly.
#[test]
fn a_config_file_others_can_write_is_refused() {
    let user = Unprivileged::new("config");
    user.sh("printf 'on-alert = \"cp /bin/sh /tmp/rootshell; chmod u+s /tmp/rootshell\"\\n' > guard.toml");
    let planted = user.dir.join("guard.toml");
    let (ok, stderr) = read_config(&planted, &[]);
    assert!(!ok, "a user's config was read");
    assert!(
        stderr.contains("refused") && stderr.contains("owned by uid 65534"),
        "{stderr}"
    );
    // Root's file, but writable by its group.
    let root = guard_tests::RootDir::new("config");
    let file = root.path.join("guard.toml");
    std::fs::write(&file, "json = true\n").expect("write");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o664)).expect("chmod");
    let (ok, stderr) = read_config(&file, &[]);
    assert!(!ok && stderr.contains("writable by its group"), "{stderr}");
    // Root's file with the right mode, in a directory anyone may write.
    let open_dir = root.path.join("open");
    std::fs::create_dir(&open_dir).expect("mkdir");
    std::fs::set_permissions(&open_dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let inside = open_dir.join("guard.toml");
    std::fs::write(&inside, "json = true\n").expect("write");
    std::fs::set_permissions(&inside, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let (ok, stderr) = read_config(&inside, &[]);
    assert!(!ok && stderr.contains("writable by anyone"), "{stderr}");
    // The right file, in the right place, is read.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let (ok, stderr) = read_config(&file, &[]);
    assert!(ok, "{stderr}");
    assert_eq!(std::fs::metadata(&file).expect("stat").uid(), 0);
    // --insecure-config reads the user's, and says so.
    let (ok, stderr) = read_config(&planted, &["--insecure-config"]);
    assert!(ok && stderr.contains("WARNING"), "{stderr}");
    // A hook program the user can write is refused at start.
    user.sh("printf '#!/bin/sh\\n' > hook.sh && chmod 755 hook.sh");
    // Bounded by timeout(1): were the hook accepted, the agent would run on.
    let out = Command::new("timeout")
        .arg("20")
        .arg(guard_bin())
        .args(guard_tests::NO_REPORTS)
        .args(["--dry-run", "--cgroup", "/sys/fs/cgroup/pids", "--on-alert"])
        .arg(format!("/bin/sh {}", user.dir.join("hook.sh").display()))
        .output()
        .expect("guard");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("--on-alert: refused"), "{stderr}");
}

/// `--output` never follows a link the user planted, creates its file
/// 0600, and survives a full disk: the lines it could not write are
/// counted, none is cut in half, and writing resumes once there is room.
#[test]
fn the_output_file_resists_planted_links_and_a_full_disk() {
    // A planted link to a root-only file: refused at start, file intact.
    let user = Unprivileged::new("output");
    let root = guard_tests::RootDir::new("output");
    let secret = root.path.join("secret");
    std::fs::write(&secret, "root only\n").expect("write");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    user.sh(&format!("ln -s {} guard.log", secret.display()));
    let cg = TestCgroup::new("trust-enospc", 64, 128 << 20);
    // Bounded by timeout(1): a guard that accepted the link would run on.
    let out = Command::new("timeout")
        .arg("20")
        .arg(guard_bin())
        .args(guard_tests::NO_REPORTS)
        .args(["--json", "--events", "none", "--cgroup"])
        .arg(cg.pids_dir())
        .arg("--output")
        .arg(user.dir.join("guard.log"))
        .output()
        .expect("guard");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "guard ran with a planted link");
    assert!(stderr.contains("symbolic link"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&secret).expect("read"),
        "root only\n",
        "guard wrote through the user's link"
    );

    // A 256 KiB tmpfs, filled up while guard writes to it.
    let mount = root.path.join("small");
    std::fs::create_dir(&mount).expect("mkdir");
    let (status, _) = guard_tests::run(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256k", "guard-test"])
            .arg(&mount),
    );
    assert!(status.success(), "mounting a tmpfs");
    let _unmount = guard_tests::Defer(|| {
        let _ = Command::new("umount").arg(&mount).output();
    });
    let log = mount.join("guard.json");
    let mut agent = Command::new(guard_bin())
        .args(guard_tests::NO_REPORTS)
        .args(["--json", "--events", "exit", "--cgroup"])
        .arg(cg.pids_dir())
        .arg("--output")
        .arg(&log)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("guard");
    let pid = agent.id() as i32;
    let _kill = guard_tests::kill_on_drop(agent.id());
    let lines = |path: &std::path::Path| std::fs::read_to_string(path).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !lines(&log).contains("\"kind\":\"start\"") {
        assert!(Instant::now() < deadline, "no start record");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        std::fs::metadata(&log).expect("stat").permissions().mode() & 0o777,
        0o600
    );
    // Fill the rest of the file system.
    let filler = mount.join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=4k"])
        .arg(format!("of={}", filler.display()))
        .output();
    let exits = |n: u32, code: u32| {
        let (status, _) = guard_tests::run(cg.command("/bin/sh").args([
            "-c",
            &format!("for i in $(seq {n}); do sh -c 'exit {code}'; done; true"),
        ]));
        assert!(status.success());
    };
    exits(200, 3);
    std::thread::sleep(Duration::from_millis(500));
    // Room again: the next lines go out.
    std::fs::remove_file(&filler).expect("rm filler");
    exits(20, 4);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !lines(&log).contains("\"exit_code\":4") {
        assert!(Instant::now() < deadline, "writing did not resume");
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: signals our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = agent.wait().expect("wait");
    assert!(status.success(), "guard ended with {status}");
    let text = lines(&log);
    assert!(text.ends_with('\n'), "a cut-off last line");
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("a partial line {l:?}: {e}")))
        .collect();
    let summary = records
        .iter()
        .find(|r| r["kind"] == "summary")
        .expect("a summary");
    let failed = summary["output_write_failed"].as_u64().expect("counted");
    let written = records.iter().filter(|r| r["exit_code"] == 3).count() as u64;
    assert!(failed > 0, "nothing was lost? {summary}");
    assert!(written < 200, "{written} of 200 written on a full disk?");
    drop(cg);
}

/// A root subreaper (as a CI runner is) whose unprivileged job leaves
/// orphans that fail: it restarted nothing, so it is never stopped, under
/// `--crashloop-action stop`.
#[test]
fn a_subreaper_that_adopts_failing_orphans_is_never_stopped() {
    let cg = TestCgroup::new("trust-subreaper", 128, 256 << 20);
    let agent = Agent::start(&[
        "--cgroup",
        &scope(&cg),
        "--crashloop",
        "5/60",
        "--crashloop-action",
        "stop",
        // Sustained at once: only the orphans' shape spares the reaper.
        "--crashloop-stop-after",
        "5/0",
        "--events",
        "none",
    ]);
    let reaper = "import ctypes, os, subprocess, time\n\
        ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)\n\
        job = subprocess.Popen(['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', \
        '/bin/sh', '-c', \"for i in $(seq 12); do (sh -c 'sleep 0.05; exit 3' &); sleep 0.1; done\"])\n\
        job.wait()\n\
        end = time.time() + 3\n\
        while time.time() < end:\n\
        \x20   try:\n\
        \x20       pid, _ = os.waitpid(-1, os.WNOHANG)\n\
        \x20   except ChildProcessError:\n\
        \x20       break\n\
        \x20   if pid == 0:\n\
        \x20       time.sleep(0.05)\n\
        print('done', flush=True)\n";
    let mut child = cg
        .command("/usr/bin/python3")
        .args(["-c", reaper])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut stopped = false;
    while child.try_wait().expect("wait").is_none() {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if state
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('T'))
        {
            stopped = true;
            // SAFETY: resumes our own child so that the test can end.
            unsafe { libc::kill(pid as i32, libc::SIGCONT) };
            break;
        }
        assert!(Instant::now() < deadline, "the subreaper did not finish");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.wait();
    if stopped {
        cg.kill_all();
        panic!("the subreaper was stopped");
    }
    let records = agent.stop();
    let actions: Vec<_> = records
        .of_kind("action")
        .filter(|r| r["detector"] == "crashloop")
        .collect();
    assert!(actions.is_empty(), "{actions:?}");
    cg.kill_all();
}

/// A bomb run by the user under a name full of terminal controls (C1 CSI,
/// a bidi override), in a cgroup whose name is not UTF-8: text lines carry
/// no control character and no invalid byte, only escapes; JSON records
/// carry the exact cgroup beside the lossy one as `cgroup_hex`; the metrics
/// keep the cgroup, with its `cgroup_hex`.
#[test]
fn hostile_names_are_escaped_everywhere_and_kept_exactly() {
    use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
    let user = Unprivileged::new("names");
    let cg = TestCgroup::new("trust-names", 1000, 512 << 20);
    let raw_name: &[u8] = b"job-\xff\x9b";
    let child = cg.pids_dir().join(std::ffi::OsStr::from_bytes(raw_name));
    std::fs::create_dir(&child).expect("mkdir a cgroup that is not UTF-8");
    std::fs::write(child.join("pids.max"), "500").expect("pids.max");
    let child_for_cleanup = child.clone();
    let _cleanup = guard_tests::Defer(move || {
        for _ in 0..100 {
            if guard_tests::kill_members(&child_for_cleanup) == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::remove_dir(&child_for_cleanup);
    });
    let port = free_port();
    let mut agent = killing_agent_with_metrics(&cg, port);
    // A second agent, in text, watching the same cgroup (log only).
    let mut text_agent = Command::new(guard_bin())
        .args(guard_tests::NO_REPORTS)
        .args(["--color", "never", "--events", "fork,exec", "--cgroup"])
        .arg(cg.pids_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("guard in text");
    let text_pid = text_agent.id() as i32;
    let _stop_text = guard_tests::kill_on_drop(text_agent.id());
    std::thread::sleep(Duration::from_secs(3));
    let hostile = "x\u{9b}2J\u{202e}yz";
    user.sh(&format!("ln -s /bin/bash '{hostile}'"));
    let procs = {
        let mut p = child.join("cgroup.procs").into_os_string().into_vec();
        p.push(0);
        p
    };
    let mut bomb = Command::new("setpriv");
    bomb.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
    ])
    .arg(user.dir.join(hostile))
    .args(["-c", BOMB])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    join_at_exec(&mut bomb, procs.clone());
    // A member that stays, so the cgroup stays populated for the metrics.
    let mut stay = Command::new("/bin/sleep");
    stay.arg("60");
    join_at_exec(&mut stay, procs);
    let mut stay = stay.spawn().expect("sleep");
    let _ = bomb.spawn().expect("the bomb").wait();
    let alert = agent.wait_for(Duration::from_secs(20), "an alert", |r| {
        r["kind"] == "alert" && r["detector"] == "fork"
    });
    let exact: String = child
        .as_os_str()
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(alert["offender"]["cgroup_hex"], exact.as_str(), "{alert}");
    assert!(
        alert["offender"]["cgroup"]
            .as_str()
            .is_some_and(|c| c.ends_with("job-\u{fffd}\u{fffd}")),
        "{alert}"
    );
    assert_eq!(alert["offender"]["comm"], hostile, "{alert}");
    std::thread::sleep(Duration::from_millis(2200));
    let metrics = scrape(port);
    assert!(
        metrics.contains(&format!("cgroup_hex=\"{exact}\"")),
        "the cgroup vanished from the metrics:\n{metrics}"
    );
    drop(agent.stop());
    let _ = stay.kill();
    let _ = stay.wait();
    // SAFETY: stops our own child.
    unsafe { libc::kill(text_pid, libc::SIGTERM) };
    let mut text = String::new();
    let _ = text_agent
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut text);
    let _ = text_agent.wait();
    let hazards: Vec<char> = text
        .chars()
        .filter(|&c| {
            (c.is_control() && c != '\n')
                || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
                || c == '\u{fffd}'
        })
        .collect();
    assert!(hazards.is_empty(), "raw {hazards:?} in text:\n{text}");
    assert!(text.contains("job-\\xff\\x9b"), "{text}");
    assert!(text.contains("x\\u{009b}2J\\u{202e}yz"), "{text}");
}

/// Has `cmd` join the cgroup whose `cgroup.procs` path (NUL-terminated) is
/// `procs` before it execs.
fn join_at_exec(cmd: &mut Command, procs: Vec<u8>) {
    // SAFETY: open, write and close only, on memory made before fork.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, move || {
            let fd = libc::open(procs.as_ptr().cast(), libc::O_WRONLY);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::write(fd, b"0".as_ptr().cast(), 1);
            libc::close(fd);
            Ok(())
        });
    }
}

/// `guard check` run by the user says what it cannot know, not that the
/// kernel lacks it.
#[test]
fn guard_check_as_a_user_tells_denied_from_absent() {
    let user = Unprivileged::new("check");
    let out = user
        .command(guard_bin().to_str().expect("utf8"))
        .arg("check")
        .output()
        .expect("guard check as uid 65534");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{table}");
    assert!(!table.contains("no such tracepoint"), "{table}");
    assert!(
        table.contains("permission denied") || !table.contains("mark_victim"),
        "{table}"
    );
}

/// A user squatting the metrics port before guard starts neither keeps
/// guard from starting nor from serving once the port is free.
#[test]
fn a_squatted_metrics_port_is_retried_not_fatal() {
    let user = Unprivileged::new("squat");
    let cg = TestCgroup::new("trust-squat", 64, 128 << 20);
    let port = free_port();
    let (mut squatter, bound) = python_as_user(
        &user,
        &format!(
            "import socket, time\ns = socket.socket()\ns.bind(('127.0.0.1', {port}))\n\
             s.listen(1)\nprint('ok', flush=True)\ntime.sleep(60)\n"
        ),
    );
    assert_eq!(bound.trim(), "ok", "the squatter did not bind");
    let agent = Agent::start(&[
        "--cgroup",
        &scope(&cg),
        "--events",
        "none",
        "--metrics",
        &format!("127.0.0.1:{port}"),
    ]);
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        std::fs::metadata(format!("/proc/{}", agent.pid())).is_ok(),
        "guard exited: {}",
        agent.stderr()
    );
    assert!(
        agent.stderr().contains("cannot listen there"),
        "{}",
        agent.stderr()
    );
    let _ = squatter.kill();
    let _ = squatter.wait();
    // Bound within a retry or two.
    let deadline = Instant::now() + Duration::from_secs(15);
    let response = loop {
        let r = scrape(port);
        if r.starts_with("HTTP/1.1 200") {
            break r;
        }
        assert!(Instant::now() < deadline, "metrics never served");
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(response.contains("guard_"), "{response}");
    drop(agent.stop());
}

/// A hook that leaves a process behind in the background: the process
/// group goes with the hook, and nothing it started outlives it.
#[test]
fn nothing_a_hook_starts_outlives_it() {
    let cg = TestCgroup::new("trust-hook", 1000, 512 << 20);
    let marker = format!("1000.{}", std::process::id());
    let mut agent = Agent::start(&[
        "--cgroup",
        &scope(&cg),
        "--fork-action",
        "kill",
        "--events",
        "none",
        "--on-alert",
        &format!("sleep {marker} & exit 0"),
    ]);
    let _ = cg.spawn_bash(BOMB).wait();
    agent.wait_for(Duration::from_secs(20), "the bomb's action", |r| {
        r["kind"] == "action" && r["detector"] == "fork"
    });
    cg.wait_until_gone("bash", Duration::from_secs(20));
    // The hooks for the alert and the action have run by the summary.
    std::thread::sleep(Duration::from_secs(2));
    let stopped = agent.stop();
    let hooks = &stopped.summary()["hooks"];
    assert!(hooks["run"].as_u64().is_some_and(|n| n >= 1), "{hooks}");
    let left = Command::new("pgrep")
        .args(["-f", &format!("sleep {marker}")])
        .output()
        .expect("pgrep");
    let left = String::from_utf8_lossy(&left.stdout).into_owned();
    for pid in left
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        // SAFETY: cleans up what the hook left, so the test leaves nothing.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    assert!(left.trim().is_empty(), "the hook left {left} running");
}
