//! `--on-alert CMD`: the operator's command, run for every alert and
//! action (as earlyoom's `-N`, Falco's `program_output`): `sh -c CMD` with
//! the record as one JSON line on stdin and its main fields in the
//! environment (`GUARD_KIND`, `GUARD_DETECTOR`, `GUARD_RULE`,
//! `GUARD_ACTION`, `GUARD_PID`, `GUARD_COMM`, `GUARD_CGROUP`).
//!
//! It never holds detection up: records are handed to a thread of its own
//! through a bounded queue (a full queue drops the hook, counted). One
//! command runs at a time, for at most [`HOOK_TIMEOUT`] (then it is
//! killed), at most [`HOOK_BURST`] in a row and then one per
//! [`HOOK_REFILL`] (the others are skipped, counted). A command that fails
//! is said on stderr and counted, never fatal. It runs at normal priority
//! and OOM score, not guard's.

use std::{
    io::Write as _,
    os::unix::process::CommandExt as _,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use serde_json::Value;

/// Longest a hook may run before it is killed.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(10);
/// Hooks that may run back to back...
pub const HOOK_BURST: u32 = 5;
/// ...and then one per this.
pub const HOOK_REFILL: Duration = Duration::from_secs(6);
/// Records waiting for the hook thread, at most.
const QUEUE: usize = 64;

/// What became of the hooks (for the summary).
#[derive(Debug, Default)]
pub struct HookCounts {
    pub run: AtomicU64,
    pub failed: AtomicU64,
    /// Over the rate, or the queue was full.
    pub skipped: AtomicU64,
}

/// The pipeline's end: hands records over without waiting.
pub struct Hooks {
    tx: mpsc::SyncSender<Value>,
    pub counts: Arc<HookCounts>,
}

impl Hooks {
    /// Starts the hook thread for `command`.
    pub fn spawn(command: String) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel::<Value>(QUEUE);
        let counts = Arc::new(HookCounts::default());
        let shared = counts.clone();
        std::thread::Builder::new()
            .name("guard-hook".into())
            .spawn(move || {
                let mut bucket = TokenBucket::new(HOOK_BURST, HOOK_REFILL);
                for record in rx {
                    if !bucket.take(Instant::now()) {
                        shared.skipped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    shared.run.fetch_add(1, Ordering::Relaxed);
                    if let Err(why) = run(&command, &record) {
                        shared.failed.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!("--on-alert hook for a {} record: {why}", record["kind"]);
                    }
                }
            })?;
        Ok(Self { tx, counts })
    }

    /// Queues a hook for `record` (an alert or an action).
    pub fn fire(&self, record: Value) {
        if self.tx.try_send(record).is_err() {
            self.counts.skipped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A token bucket: `burst` tokens, one more per `refill`.
#[derive(Debug)]
pub struct TokenBucket {
    burst: u32,
    refill: Duration,
    tokens: u32,
    since: Option<Instant>,
}

impl TokenBucket {
    pub fn new(burst: u32, refill: Duration) -> Self {
        Self {
            burst,
            refill,
            tokens: burst,
            since: None,
        }
    }

    /// Takes a token at `now`, if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        let since = *self.since.get_or_insert(now);
        let earned = (now.saturating_duration_since(since).as_nanos()
            / self.refill.as_nanos().max(1)) as u32;
        if earned > 0 {
            self.tokens = (self.tokens + earned).min(self.burst);
            self.since = Some(since + self.refill * earned);
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

/// The environment a hook gets from its record.
pub fn environment(record: &Value) -> Vec<(&'static str, String)> {
    let text = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    let offender = &record["offender"];
    [
        ("GUARD_KIND", text(&record["kind"])),
        ("GUARD_DETECTOR", text(&record["detector"])),
        ("GUARD_RULE", text(&record["rule"])),
        ("GUARD_ACTION", text(&record["action"])),
        (
            "GUARD_PID",
            text(&offender["pid"]).or_else(|| text(&record["pid"])),
        ),
        (
            "GUARD_COMM",
            text(&offender["comm"]).or_else(|| text(&record["comm"])),
        ),
        (
            "GUARD_CGROUP",
            text(&offender["cgroup"])
                .or_else(|| text(&record["cgroup"]))
                .or_else(|| text(&record["pool"])),
        ),
    ]
    .into_iter()
    .filter_map(|(k, v)| Some((k, v?)))
    .collect()
}

fn run(command: &str, record: &Value) -> Result<(), String> {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(command)
        .envs(environment(record))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    // SAFETY: the closure calls only async-signal-safe functions (setpriority,
    // sched_setscheduler, open, write, close) on memory prepared before fork.
    unsafe {
        cmd.pre_exec(|| {
            // Not guard's nice -20, SCHED_FIFO or OOM immunity.
            libc::setpriority(libc::PRIO_PROCESS, 0, 0);
            let param: libc::sched_param = std::mem::zeroed();
            libc::syscall(
                libc::SYS_sched_setscheduler,
                0,
                libc::SCHED_OTHER,
                &raw const param,
            );
            let fd = libc::open(c"/proc/self/oom_score_adj".as_ptr(), libc::O_WRONLY);
            if fd >= 0 {
                libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start /bin/sh: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its stdin is no failure.
        let _ = writeln!(stdin, "{record}");
    }
    let deadline = Instant::now() + HOOK_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(format!("`{command}` exited with {status}")),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "`{command}` ran longer than {} s and was killed",
                    HOOK_TIMEOUT.as_secs()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("waiting for `{command}`: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_a_burst_then_one_per_refill() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(3, Duration::from_secs(6));
        let taken: Vec<bool> = (0..5).map(|_| b.take(t0)).collect();
        assert_eq!(taken, [true, true, true, false, false]);
        assert!(!b.take(t0 + Duration::from_secs(5)));
        assert!(b.take(t0 + Duration::from_secs(6)));
        assert!(!b.take(t0 + Duration::from_secs(7)));
        // A long quiet refills to the burst, not beyond.
        let later = t0 + Duration::from_secs(600);
        assert_eq!((0..5).filter(|_| b.take(later)).count(), 3);
    }

    #[test]
    fn the_environment_names_the_record_and_its_offender() {
        let record = serde_json::json!({
            "kind": "action", "detector": "fork", "rule": "explosion", "action": "kill",
            "offender": {"pid": 4242, "comm": "bash", "cgroup": "/sys/fs/cgroup/ci"}
        });
        let env = environment(&record);
        for pair in [
            ("GUARD_KIND", "action"),
            ("GUARD_DETECTOR", "fork"),
            ("GUARD_RULE", "explosion"),
            ("GUARD_ACTION", "kill"),
            ("GUARD_PID", "4242"),
            ("GUARD_COMM", "bash"),
            ("GUARD_CGROUP", "/sys/fs/cgroup/ci"),
        ] {
            assert!(
                env.iter().any(|(k, v)| (*k, v.as_str()) == pair),
                "{pair:?} not in {env:?}"
            );
        }
    }
}
