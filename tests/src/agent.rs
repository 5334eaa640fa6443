//! The real agent as a child process, its records read as they come.

use std::{
    io::{BufRead as _, BufReader},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{RootDir, guard_bin};

/// A directory of one agent's own (under /run, 0700): its incident
/// reports and its stream's socket. Removed with the records read back.
pub struct AgentDir(pub RootDir);

impl AgentDir {
    fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        AgentDir(RootDir::new(&format!(
            "agent-{}",
            NEXT.fetch_add(1, Ordering::Relaxed)
        )))
    }

    /// Where the agent writes its incident reports.
    pub fn incidents(&self) -> PathBuf {
        self.0.path.join("incidents")
    }

    /// The agent's `--socket`.
    pub fn socket(&self) -> PathBuf {
        self.0.path.join("guard.sock")
    }
}

/// The agent running as a child process with `--json`.
pub struct Agent {
    child: Option<Child>,
    /// Its reports and socket, unless the test gave its own.
    pub dir: Option<AgentDir>,
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
    pub dir: Option<AgentDir>,
}

impl Stopped {
    pub fn summary(&self) -> &Value {
        self.records
            .iter()
            .rev()
            .find(|r| r["kind"] == "summary")
            .unwrap_or_else(|| panic!("no summary record; stderr:\n{}", self.stderr))
    }

    /// The incident report of `incident`, as written.
    pub fn report(&self, incident: &str) -> Value {
        let dir = self.dir.as_ref().expect("the harness's own --incident-dir");
        read_report(&dir.incidents(), incident)
    }

    /// Records of `kind`.
    pub fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.records.iter().filter(move |r| r["kind"] == kind)
    }
}

impl Agent {
    /// Starts `guard --json ARGS` and waits for its `start` record.
    pub fn start(args: &[&str]) -> Self {
        let own = |flag: &str| {
            !args
                .iter()
                .any(|a| *a == flag || a.starts_with(&format!("{flag}=")))
        };
        let dir = (own("--incident-dir") && own("--socket")).then(AgentDir::new);
        let mut extra: Vec<std::ffi::OsString> = Vec::new();
        if let Some(dir) = &dir {
            extra.extend(["--incident-dir".into(), dir.incidents().into()]);
            extra.extend(["--socket".into(), dir.socket().into()]);
        }
        let mut child = Command::new(guard_bin())
            .arg("--json")
            .args(&extra)
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
            dir,
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
        // Every record matches the published schema.
        for record in &records {
            if let Err(why) = crate::schema::check(record) {
                panic!(
                    "a {} record does not match schema/guard.schema.json: {why}\n{record}",
                    record["kind"]
                );
            }
        }
        if let Some(dir) = &self.dir {
            check_reports(&records, &dir.incidents());
        }
        Stopped {
            records,
            status,
            stderr: self.stderr(),
            dir: self.dir.take(),
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

/// Reads `incident`'s report in `dir`, panicking with what is there.
pub fn read_report(dir: &Path, incident: &str) -> Value {
    let path = dir.join(format!("{incident}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        let there: Vec<_> = std::fs::read_dir(dir)
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        panic!(
            "no incident report {} ({e}); the directory holds {there:?}",
            path.display()
        )
    });
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()))
}

/// Every action the agent took left a report of its incident whose tree
/// names every member it signalled (with the action's own outcome), and
/// every report is 0600.
fn check_reports(records: &[Value], dir: &Path) {
    for action in records
        .iter()
        .filter(|r| r["kind"] == "action" && r["dry_run"] == false)
    {
        let Some(incident) = action["incident"].as_str() else {
            panic!("an action without an incident: {action}");
        };
        let report = read_report(dir, incident);
        let path = dir.join(format!("{incident}.json"));
        let mode = std::fs::metadata(&path).map(|m| m.permissions().mode() & 0o777);
        assert_eq!(mode.ok(), Some(0o600), "{} is not 0600", path.display());
        let actions = report["actions"].as_array().cloned().unwrap_or_default();
        assert!(
            actions.iter().any(|a| a["outcome"] == action["outcome"]),
            "the report of {incident} lacks the action {action}:\n{report:#}"
        );
        let tree = report["tree"].as_array().cloned().unwrap_or_default();
        let named: std::collections::BTreeSet<u64> = tree
            .iter()
            .filter(|m| m["signalled"] == true)
            .filter_map(|m| m["pid"].as_u64())
            .filter(|&pid| pid > 0)
            .collect();
        let signalled = action["outcome"]["signalled"].as_u64().unwrap_or(0);
        assert!(
            named.len() as u64 >= signalled,
            "the report of {incident} names {} signalled members, the action signalled {signalled}: {action}",
            named.len()
        );
    }
}
