//! The agent under faults: a reader that stalls or goes away, a queue too
//! small for the event rate, a stopped agent, a tiny ring buffer, a scope
//! cgroup removed and created again, hostile names, two agents at once.
//! Each asserts what must hold whatever the fault: bounded memory, exact
//! loss accounting, enforcement that goes on, and no action on a harmless
//! process.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    process::{Child, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use guard_tests::{Agent, TestCgroup, guard_bin, num};
use serde_json::Value;

const BOMB: &str = ":(){ :|:& };:";

/// A kB field of /proc/PID/status.
fn status_kb(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The agent with its stdout left to the test: `start` read, nothing more.
struct RawAgent {
    child: Child,
    stdout: Option<BufReader<ChildStdout>>,
}

impl RawAgent {
    fn start(args: &[&str]) -> Self {
        Self::start_as(&["--json"], args)
    }

    /// With `format` (`--json`, or nothing for text) before `args`.
    fn start_as(format: &[&str], args: &[&str]) -> Self {
        let mut child = Command::new(guard_bin())
            .args(guard_tests::NO_REPORTS)
            .args(format)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn guard");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read the start record");
        assert!(
            line.contains("\"kind\":\"start\"") || line.starts_with("# start:"),
            "not a start: {line}"
        );
        RawAgent {
            child,
            stdout: Some(stdout),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill has no memory effects; the pid is our child's, not
        // yet waited for.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Waits for the exit (after a signal), panicking after 30 s.
    fn wait(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "guard did not exit within 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stderr(&mut self) -> String {
        let mut text = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut text);
        }
        text
    }
}

impl Drop for RawAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// stdout to a pipe nobody reads while forks stream in scope and a bomb
/// runs: the agent's memory stays bounded, event lines are dropped and
/// counted exactly, and the bomb is contained all the same.
#[test]
fn a_stalled_reader_bounds_memory_and_loses_only_counted_lines() {
    let work = TestCgroup::new("stall-work", 64, 256 << 20);
    let bombs = TestCgroup::new("stall-bomb", 1000, 512 << 20);
    let (w, b) = (
        work.pids_dir().to_str().expect("utf8").to_owned(),
        bombs.pids_dir().to_str().expect("utf8").to_owned(),
    );
    let mut agent = RawAgent::start(&["--cgroup", &w, "--cgroup", &b, "--fork-action", "kill"]);
    let pid = agent.pid();
    let rss_at_start = status_kb(pid, "VmRSS");
    let mut forks = work
        .workload(&["forks", "60000"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("forks");
    let mut peak = rss_at_start;
    let mut bomb = None;
    let started = Instant::now();
    while forks.try_wait().expect("try_wait").is_none() {
        peak = peak.max(status_kb(pid, "VmRSS"));
        if bomb.is_none() && started.elapsed() > Duration::from_secs(2) {
            bomb = Some(bombs.spawn_bash(BOMB));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut done = String::new();
    forks
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut done)
        .expect("read");
    let done: Value = serde_json::from_str(done.trim()).expect("workload JSON");
    assert_eq!(
        num(&done, "forks"),
        60_000,
        "the fork loop was cut short: {done}"
    );
    let mut bomb = bomb.expect("the bomb ran during the stall");
    bombs.wait_until_gone("bash", Duration::from_secs(10));
    assert_eq!(bombs.pids_refused(), 0, "the bomb reached pids.max");
    peak = peak.max(status_kb(pid, "VmRSS"));
    assert!(
        agent.child.try_wait().expect("try_wait").is_none(),
        "the agent died: {}",
        agent.stderr()
    );

    // Read everything now, summary included.
    agent.signal(libc::SIGINT);
    let mut records = Vec::new();
    for line in agent.stdout.take().expect("stdout").lines() {
        let line = line.expect("read");
        records
            .push(serde_json::from_str::<Value>(&line).unwrap_or_else(|e| panic!("{line}: {e}")));
    }
    assert!(agent.wait().success());
    let summary = records
        .iter()
        .find(|r| r["kind"] == "summary")
        .unwrap_or_else(|| panic!("no summary; stderr: {}", agent.stderr()));
    let events = records
        .iter()
        .filter(|r| {
            !matches!(
                r["kind"].as_str(),
                Some(
                    "start"
                        | "summary"
                        | "alert"
                        | "action"
                        | "resolved"
                        | "refusal"
                        | "lost"
                        | "blocked"
                        | "unblocked"
                )
            )
        })
        .count() as u64;
    assert!(
        peak <= rss_at_start + RSS_HEADROOM_KB,
        "RSS grew from {rss_at_start} kB to {peak} kB"
    );
    let (shown, dropped) = (num(summary, "shown"), num(summary, "output_dropped"));
    eprintln!(
        "RSS at start {} MiB, peak {} MiB; {events} event lines written, {dropped} dropped, \
         {} records dropped",
        rss_at_start >> 10,
        peak >> 10,
        num(summary, "records_dropped")
    );
    assert!(
        dropped > 0,
        "the reader never stalled the output: {summary}"
    );
    assert_eq!(
        events,
        shown - dropped,
        "every event line written or counted: {summary}"
    );
    let alerts = records.iter().filter(|r| r["kind"] == "alert").count() as u64;
    assert!(
        alerts + num(summary, "records_dropped") >= 1,
        "the bomb's alert was neither written nor counted"
    );
    let _ = bomb.kill();
    let _ = bomb.wait();
}

/// What the agent's RSS may grow by above its start, whatever its readers
/// do: 16 MiB of output waiting at most (`RECORD_BACKLOG`), the event
/// queue full, and the process table of a busy host (README: "Memory").
const RSS_HEADROOM_KB: u64 = 64 << 10;

/// An enforcing agent whose stdout reader goes away says so on stderr and
/// goes on enforcing.
#[test]
fn an_enforcing_agent_outlives_its_reader_and_still_contains_a_bomb() {
    let cg = TestCgroup::new("closed-reader", 1000, 512 << 20);
    let scope = cg.pids_dir().to_str().expect("utf8").to_owned();
    let mut agent = RawAgent::start(&["--cgroup", &scope, "--fork-action", "kill"]);
    drop(agent.stdout.take());
    // Something for it to write, so that it finds the reader gone.
    let (status, _) = guard_tests::run(&mut cg.workload(&["forks", "50"]));
    assert!(status.success());
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        agent.child.try_wait().expect("try_wait").is_none(),
        "the agent ended with its reader: {}",
        agent.stderr()
    );
    let mut bomb = cg.spawn_bash(BOMB);
    cg.wait_until_gone("bash", Duration::from_secs(10));
    assert_eq!(cg.pids_refused(), 0, "the bomb reached pids.max");
    assert!(
        agent.child.try_wait().expect("try_wait").is_none(),
        "the agent died"
    );
    agent.signal(libc::SIGTERM);
    let status = agent.wait();
    let stderr = agent.stderr();
    assert!(status.success(), "{status}: {stderr}");
    assert!(
        stderr.contains("goes on enforcing"),
        "no word of the failed output on stderr: {stderr}"
    );
    let _ = bomb.wait();
}

/// A queue so small that most exits of a sequential fork loop are lost:
/// the loop (never more than two processes) must not look like growth.
#[test]
fn lost_events_never_make_a_harmless_loop_look_like_a_bomb() {
    let cg = TestCgroup::new("tiny-queue", 64, 256 << 20);
    let scope = cg.pids_dir().to_str().expect("utf8").to_owned();
    let agent = Agent::start(&[
        "--cgroup",
        &scope,
        "--queue",
        "1",
        "--fork-action",
        "kill",
        "--events",
        "fork,exit",
    ]);
    let (status, out) = guard_tests::run(&mut cg.workload(&["forks", "20000"]));
    let stopped = agent.stop();
    assert!(status.success(), "the fork loop was killed: {status}");
    let done: Value = serde_json::from_str(out.trim()).expect("workload JSON");
    assert_eq!(num(&done, "forks"), 20_000);
    let summary = stopped.summary();
    assert!(
        num(summary, "lost_queue_full") > 0,
        "nothing was lost: the test did not test it: {summary}"
    );
    let acted: Vec<&Value> = stopped
        .records
        .iter()
        .filter(|r| matches!(r["kind"].as_str(), Some("alert" | "action")))
        .collect();
    assert!(acted.is_empty(), "{acted:?}");
}

/// A comm set by prctl to terminal escapes, a newline and a byte that is
/// not UTF-8 (15 bytes, the most a comm holds).
const HOSTILE_COMM: &[u8] = b"\x1b]0;t\x07\nFORGED\xff";

/// Runs the hostile workloads in `cg`: the renamed process forking a child,
/// and a program exec'd under a hostile path with hostile arguments.
/// Returns the path exec'd.
fn hostile_workloads(cg: &TestCgroup, dir: &std::path::Path) -> Vec<u8> {
    use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
    let hex: String = HOSTILE_COMM.iter().map(|b| format!("{b:02x}")).collect();
    let (status, _) = guard_tests::run(&mut cg.workload(&["rename", &hex]));
    assert!(status.success(), "rename workload: {status}");
    std::fs::create_dir_all(dir).expect("mkdir");
    let mut path = dir.as_os_str().as_bytes().to_vec();
    path.extend_from_slice(b"/a\nFORGED 00:00:00 exit\x1b[2J\xfe");
    let path = std::ffi::OsString::from_vec(path);
    std::os::unix::fs::symlink("/bin/true", &path).expect("symlink");
    let (status, _) = guard_tests::run(
        cg.command(&path)
            .arg("x y")
            .arg(std::ffi::OsStr::from_bytes(b"\xff\x1b")),
    );
    assert!(status.success(), "hostile exec: {status}");
    path.into_vec()
}

/// Names made of escapes, newlines and bytes that are not UTF-8 neither
/// drive the terminal nor forge records in text, and keep their exact
/// bytes in JSON; a prctl rename shows in the next record.
#[test]
fn hostile_names_are_escaped_in_text_and_exact_in_json() {
    let cg = TestCgroup::new("hostile", 64, 256 << 20);
    let scope = cg.pids_dir().to_str().expect("utf8").to_owned();
    let dir = std::env::temp_dir().join(format!("guard-test-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let _cleanup = guard_tests::Defer(|| {
        let _ = std::fs::remove_dir_all(&dir);
    });
    let events = ["--cgroup", &scope, "--events", "fork,exec,exit"];

    let mut text_agent = RawAgent::start_as(&["--color", "always"], &events);
    hostile_workloads(&cg, &dir.join("text"));
    text_agent.signal(libc::SIGINT);
    let mut text = Vec::new();
    text_agent
        .stdout
        .take()
        .expect("stdout")
        .read_to_end(&mut text)
        .expect("read");
    assert!(text_agent.wait().success());
    let shown = String::from_utf8_lossy(&text);
    // Colour is asked for: ESC may only start guard's own SGR colours.
    let mut rest = &text[..];
    while let Some(at) = rest.iter().position(|&b| b == 0x1b) {
        let sgr = rest[at + 1..].starts_with(b"[0m")
            || rest[at + 1..].starts_with(b"[3")
            || rest[at + 1..].starts_with(b"[1;3");
        assert!(sgr, "a raw ESC that is not guard's colour: {shown}");
        rest = &rest[at + 1..];
    }
    assert!(
        !text
            .iter()
            .any(|&b| (b < 0x20 && b != b'\n' && b != 0x1b) || b == 0x7f),
        "a raw control byte: {shown}"
    );
    for line in shown.lines() {
        let ok = line.starts_with("TIME(UTC)")
            || line.starts_with("# ")
            || line.as_bytes().get(2) == Some(&b':') && line.as_bytes().get(8) == Some(&b'.');
        assert!(ok, "a line that is no record: {line:?}");
    }
    assert!(
        shown.contains("\\x1b]0;t\\x07\\x0aFORGED\\xff"),
        "the renamed comm, escaped: {shown}"
    );
    assert!(
        shown.contains("a\\x0aFORGED 00:00:00 exit\\x1b[2J\\xfe"),
        "the path, escaped: {shown}"
    );

    let agent = Agent::start(&events);
    let path = hostile_workloads(&cg, &dir.join("json"));
    let stopped = agent.stop();
    let hex = |b: &[u8]| b.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let exec = stopped
        .of_kind("exec")
        .find(|r| r["filename_hex"] == hex(&path).as_str())
        .unwrap_or_else(|| panic!("no exec record with the exact path; {:?}", stopped.records));
    assert_eq!(
        exec["cmdline"].as_array().map(|a| &a[1..]),
        Some(
            &[
                serde_json::json!("x y"),
                serde_json::json!("\u{fffd}\u{1b}")
            ][..]
        ),
        "{exec}"
    );
    assert_eq!(exec["cmdline_hex"][2], "ff1b", "{exec}");
    // The renamed process's child: its parent's name is the new one.
    let child = stopped
        .of_kind("fork")
        .find(|r| r["parent_comm_hex"] == hex(HOSTILE_COMM).as_str())
        .unwrap_or_else(|| {
            panic!(
                "no fork record names the renamed parent: {:?}",
                stopped.records
            )
        });
    assert_eq!(child["comm_hex"], hex(HOSTILE_COMM).as_str(), "{child}");
}

/// Waits until the agent's stderr contains `text`, panicking after 10 s.
fn wait_stderr(agent: &Agent, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !agent.stderr().contains(text) {
        assert!(
            Instant::now() < deadline,
            "no {text:?} on stderr within 10 s:\n{}",
            agent.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A service restart removes the scope cgroup and creates it again at its
/// path, with a new id: guard says so, and the fork probe's containment
/// follows it (it used to go on matching the old id, leaving the bomb to
/// the agent alone, which let it reach pids.max).
#[test]
fn the_kernel_scope_follows_a_cgroup_created_again() {
    let cg = TestCgroup::new("recreated", 1000, 512 << 20);
    let scope = cg.pids_dir().to_str().expect("utf8").to_owned();
    let mut agent = Agent::start(&[
        "--cgroup",
        &scope,
        "--fork-action",
        "kill",
        "--events",
        "exec",
    ]);
    std::fs::remove_dir(cg.pids_dir()).expect("rmdir the scope");
    wait_stderr(&agent, "was removed");
    std::fs::create_dir(cg.pids_dir()).expect("mkdir the scope again");
    std::fs::write(cg.pids_dir().join("pids.max"), "1000").expect("pids.max");
    wait_stderr(&agent, "was created again");
    let mut bomb = cg.spawn_bash(BOMB);
    let alert = agent.wait_for(Duration::from_secs(20), "the bomb's alert", |r| {
        r["kind"] == "alert" && r["detector"] == "fork"
    });
    cg.wait_until_gone("bash", Duration::from_secs(10));
    let _ = bomb.wait();
    drop(agent.stop());
    assert_eq!(alert["condemned_by_kernel"], true, "{alert}");
    assert_eq!(cg.pids_refused(), 0, "the bomb reached pids.max");
}

/// Two agents on one cgroup: one kills a bomb, the other only watches.
/// Neither takes the kills for a crash loop (the watcher used to: SIGKILL
/// ×5 under one parent looked like a program crashing).
#[test]
fn a_second_agent_does_not_take_the_first_ones_kills_for_a_crash_loop() {
    let cg = TestCgroup::new("two-agents", 1000, 512 << 20);
    let scope = cg.pids_dir().to_str().expect("utf8").to_owned();
    let watcher = Agent::start(&["--cgroup", &scope, "--events", "exit"]);
    let mut enforcer = Agent::start(&[
        "--cgroup",
        &scope,
        "--fork-action",
        "kill",
        "--events",
        "exit",
    ]);
    let mut bomb = cg.spawn_bash(BOMB);
    enforcer.wait_for(Duration::from_secs(20), "the kill", |r| {
        r["kind"] == "action" && r["detector"] == "fork"
    });
    cg.wait_until_gone("bash", Duration::from_secs(10));
    let _ = bomb.wait();
    std::thread::sleep(Duration::from_millis(500));
    let (watched, enforced) = (watcher.stop(), enforcer.stop());
    let killed = watched
        .of_kind("exit")
        .filter(|r| r["signal"] == "SIGKILL")
        .count();
    assert!(killed >= 5, "the watcher saw {killed} kills: no test");
    for (who, stopped) in [("watcher", &watched), ("enforcer", &enforced)] {
        let loops: Vec<&Value> = stopped
            .of_kind("alert")
            .filter(|r| r["detector"] == "crashloop")
            .collect();
        assert!(loops.is_empty(), "the {who} saw a crash loop: {loops:?}");
    }
}

/// Forks the kernel has made since boot, threads included (`processes` in
/// /proc/stat).
fn forks_since_boot() -> u64 {
    std::fs::read_to_string("/proc/stat")
        .expect("/proc/stat")
        .lines()
        .find_map(|l| l.strip_prefix("processes "))
        .and_then(|n| n.trim().parse().ok())
        .expect("a processes line")
}

/// Fork records of the workload's children (the loop's own pid as parent).
fn children_shown(stopped: &guard_tests::Stopped, parent: u64) -> u64 {
    stopped
        .of_kind("fork")
        .filter(|r| r["parent_tgid"] == parent)
        .count() as u64
}

/// A field of `lost_ring_full` (absent: 0).
fn lost_ring(summary: &Value, kind: &str) -> u64 {
    summary["lost_ring_full"][kind].as_u64().unwrap_or(0)
}

/// Frozen whole (reader and all) while a fork loop runs: the kernel ring
/// buffer holds the records, and nothing is lost.
#[test]
fn a_stopped_agent_loses_nothing_the_ring_buffer_holds() {
    let cg = TestCgroup::new("stopped-agent", 64, 256 << 20);
    let scope = cg.pids_dir().to_str().expect("utf8").to_owned();
    let agent = Agent::start(&["--cgroup", &scope, "--events", "fork,exit"]);
    agent.signal(libc::SIGSTOP);
    let (status, out) = guard_tests::run(&mut cg.workload(&["forks", "3000"]));
    std::thread::sleep(Duration::from_secs(1));
    agent.signal(libc::SIGCONT);
    assert!(status.success());
    let done: Value = serde_json::from_str(out.trim()).expect("workload JSON");
    let stopped = agent.stop();
    let summary = stopped.summary();
    assert_eq!(num(summary, "lost"), 0, "{summary}");
    assert_eq!(
        children_shown(&stopped, num(&done, "pid")),
        3000,
        "{summary}"
    );
}

/// A 1 MiB ring buffer, the agent frozen while 20,000 forks come: most
/// records are lost, and every one is accounted for. Shown and lost
/// together cover the loop, and seen and lost together never exceed the
/// forks the kernel itself counted meanwhile.
#[test]
fn a_tiny_ring_buffer_counts_every_loss() {
    let cg = TestCgroup::new("tiny-ring", 64, 256 << 20);
    let scope = cg.pids_dir().to_str().expect("utf8").to_owned();
    let forks_before = forks_since_boot();
    let agent = Agent::start(&[
        "--cgroup",
        &scope,
        "--events",
        "fork",
        "--ring-buffer-mib",
        "1",
        "--fork-action",
        "kill",
    ]);
    agent.signal(libc::SIGSTOP);
    let (status, out) = guard_tests::run(&mut cg.workload(&["forks", "20000"]));
    agent.signal(libc::SIGCONT);
    assert!(status.success(), "the loop was signalled: {status}");
    let done: Value = serde_json::from_str(out.trim()).expect("workload JSON");
    let stopped = agent.stop();
    let forks_after = forks_since_boot();
    let summary = stopped.summary();
    let shown = children_shown(&stopped, num(&done, "pid"));
    let lost = lost_ring(summary, "fork");
    let seen = num(&summary["seen"], "fork");
    assert!(
        lost > 0 && shown < 20_000,
        "nothing was lost: no test: {summary}"
    );
    assert!(
        shown + lost >= 20_000,
        "{shown} shown + {lost} lost < 20000 forks: {summary}"
    );
    assert!(
        seen + lost <= forks_after - forks_before,
        "{seen} seen + {lost} lost > {} forks the kernel made: {summary}",
        forks_after - forks_before
    );
    let acted: Vec<&Value> = stopped
        .records
        .iter()
        .filter(|r| matches!(r["kind"].as_str(), Some("alert" | "action")))
        .collect();
    assert!(
        acted.is_empty(),
        "losses made the loop look harmful: {acted:?}"
    );
}

/// Over `--cpu-limit`, the agent stops writing event lines, not handling
/// events: every fork of the loop is still seen (none lost), and the lines
/// it did not write are counted as shed.
#[test]
fn over_its_cpu_limit_the_agent_sheds_lines_not_events() {
    let cg = TestCgroup::new("cpu-limit", 64, 256 << 20);
    let scope = cg.pids_dir().to_str().expect("utf8").to_owned();
    let agent = Agent::start(&["--cgroup", &scope, "--cpu-limit", "1"]);
    let (status, out) = guard_tests::run(&mut cg.workload(&["forks", "20000"]));
    assert!(status.success());
    let done: Value = serde_json::from_str(out.trim()).expect("workload JSON");
    let stopped = agent.stop();
    let summary = stopped.summary();
    let shed = num(summary, "output_shed");
    assert!(shed > 0, "nothing shed at 1% of a CPU: {summary}");
    assert_eq!(num(summary, "lost"), 0, "{summary}");
    assert!(
        num(&summary["seen"], "fork") >= 20_000,
        "forks handled: {summary}"
    );
    let written = stopped
        .records
        .iter()
        .filter(|r| {
            // Every event line: the workload's forks, execs and exits,
            // its moves, and any rss step it crossed.
            ["fork", "exec", "exit", "cgroup_attach", "rss"]
                .iter()
                .any(|k| r["kind"] == *k)
        })
        .count() as u64;
    assert_eq!(
        written + shed,
        num(summary, "shown"),
        "written and shed lines make up what passed the filters: {summary}"
    );
    assert!(
        children_shown(&stopped, num(&done, "pid")) < 20_000,
        "every fork was written"
    );
}
