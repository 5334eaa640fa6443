//! `--on-alert CMD`: the operator's command, run for every alert and
//! action (as earlyoom's `-N`, Falco's `program_output`): `sh -c CMD`, or
//! with `--on-alert-exec PROGRAM ARG...` the program itself with no shell
//! between (an image without `/bin/sh`, or no quoting to get wrong); with
//! the record (with its `time`) as one JSON line on stdin and its main
//! fields in the environment (`GUARD_KIND`, `GUARD_TIME`,
//! `GUARD_DETECTOR`, `GUARD_RULE`, `GUARD_ACTION`, `GUARD_PID`,
//! `GUARD_COMM`, `GUARD_CGROUP`).
//!
//! It never holds detection up: records are handed to a thread of its own
//! through a bounded queue (a full queue drops the hook, counted). One
//! command runs at a time, for at most [`HOOK_TIMEOUT`], in a process
//! group of its own that is killed whole at the limit (a `sleep` it left
//! in the background included); at most [`HOOK_BURST`] in a row and then
//! one per [`HOOK_REFILL`] (the others are skipped, counted). A record
//! older than [`HOOK_MAX_AGE`] when its turn comes is dropped and counted
//! (`stale`), never run late: its pid may name another process by then.
//! A command that fails is said on stderr and counted, never fatal.
//!
//! The command runs as root at normal priority and OOM score, not guard's,
//! with a minimal environment: [`HOOK_PATH`], `LANG=C.UTF-8`, `HOME=/` and
//! the `GUARD_*` variables; nothing else of guard's. Its program, and any
//! file its command names by absolute path, must be root's and writable by
//! no one else ([`check_command`]), as the config file must.

use std::{
    io::Write as _,
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::Path,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{detect::switches::Detector, respond::policy::ActionKind};

/// Longest a hook may run before its process group is killed.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(10);
/// Hooks that may run back to back...
pub const HOOK_BURST: u32 = 5;
/// ...and then one per this.
pub const HOOK_REFILL: Duration = Duration::from_secs(6);
/// A record that waited longer than this for its hook is dropped.
pub const HOOK_MAX_AGE: Duration = Duration::from_secs(60);
/// The hooks' PATH.
pub const HOOK_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Records waiting for the hook thread, at most.
const QUEUE: usize = 64;

/// What became of the hooks (for the summary).
#[derive(Debug, Default)]
pub struct HookCounts {
    pub run: AtomicU64,
    pub failed: AtomicU64,
    /// Over the rate, or the queue was full.
    pub skipped: AtomicU64,
    /// Older than [`HOOK_MAX_AGE`] when their turn came.
    pub stale: AtomicU64,
}

/// The pipeline's end: hands records over without waiting.
pub struct Hooks {
    tx: mpsc::SyncSender<(Value, Env, u64)>,
    pub counts: Arc<HookCounts>,
}

/// The hook to run: a shell command line or a program and its arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HookCommand {
    /// `--on-alert CMD`: `/bin/sh -c CMD`.
    Shell(String),
    /// `--on-alert-exec PROGRAM ARG...`: exec'd directly.
    Exec(Vec<String>),
}

impl HookCommand {
    /// From the two flags (clap keeps them exclusive).
    pub fn from_flags(shell: Option<&str>, exec: &[String]) -> Option<HookCommand> {
        match (shell, exec) {
            (Some(cmd), _) => Some(HookCommand::Shell(cmd.to_owned())),
            (None, []) => None,
            (None, argv) => Some(HookCommand::Exec(argv.to_vec())),
        }
    }

    /// How it is named in messages.
    pub fn describe(&self) -> String {
        match self {
            HookCommand::Shell(cmd) => format!("`{cmd}`"),
            HookCommand::Exec(argv) => format!("{argv:?}"),
        }
    }

    /// Why it may not run as guard's hook, or cannot run here at all:
    /// see [`check_command`] for a shell command line (and `/bin/sh` must
    /// exist: a `FROM scratch` image has none); a program must be given
    /// by absolute path, exist, be executable, and be root's and writable
    /// by no one else. The `bool` of the error says whether
    /// `--insecure-config` may override it (ownership only).
    pub fn check(&self) -> Result<(), (String, bool)> {
        match self {
            HookCommand::Shell(cmd) => {
                if !Path::new(SHELL).is_file() {
                    return Err((
                        format!(
                            "--on-alert runs `{SHELL} -c CMD` and there is no {SHELL} here (an \
                             image built FROM scratch?): give the hook as --on-alert-exec \
                             PROGRAM ARG... instead, which runs no shell"
                        ),
                        false,
                    ));
                }
                check_command(cmd).map_err(|why| (why, true))
            }
            HookCommand::Exec(argv) => {
                let program = Path::new(&argv[0]);
                if !program.is_absolute() {
                    return Err((
                        format!(
                            "--on-alert-exec {}: give the program's absolute path (no shell \
                             looks it up)",
                            argv[0]
                        ),
                        false,
                    ));
                }
                let meta = std::fs::metadata(program)
                    .map_err(|e| (format!("--on-alert-exec {}: {e}", program.display()), false))?;
                if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
                    return Err((
                        format!(
                            "--on-alert-exec {}: not an executable file",
                            program.display()
                        ),
                        false,
                    ));
                }
                crate::host::identity::check_root_owned(program, true)
                    .map(|_| ())
                    .map_err(|why| {
                        (
                            format!(
                                "--on-alert-exec: refused, {why}: the hook runs as root, so \
                                 its program must be root's and writable by no one else (or \
                                 pass --insecure-config)"
                            ),
                            true,
                        )
                    })
            }
        }
    }
}

/// The shell `--on-alert` runs.
const SHELL: &str = "/bin/sh";

/// Why `command` may not run as guard's hook: its program (the first word,
/// looked up in [`HOOK_PATH`] when it has no `/`) or a file it names by
/// absolute path is not root's or is writable by others; `Ok` otherwise.
pub fn check_command(command: &str) -> Result<(), String> {
    let words: Vec<&str> = command
        .split(|c: char| c.is_whitespace() || matches!(c, ';' | '&' | '|' | '(' | ')' | '<' | '>'))
        .map(|w| w.trim_matches(|c| c == '\'' || c == '"'))
        .filter(|w| !w.is_empty())
        .collect();
    let mut files: Vec<std::path::PathBuf> = words
        .iter()
        .filter(|w| w.starts_with('/') && Path::new(w).is_file())
        .map(|w| w.into())
        .collect();
    if let Some(first) = words.first()
        && !first.contains('/')
        && let Some(found) = HOOK_PATH
            .split(':')
            .map(|d| Path::new(d).join(first))
            .find(|p| p.is_file())
    {
        files.push(found);
    }
    for file in files {
        crate::host::identity::check_root_owned(&file, true).map_err(|why| {
            format!(
                "--on-alert: refused, {why}: the hook runs as root, so what it runs must be \
                 root's and writable by no one else (or pass --insecure-config)"
            )
        })?;
    }
    Ok(())
}

impl Hooks {
    /// Starts the hook thread for `command`.
    pub fn spawn(command: HookCommand) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel::<(Value, Env, u64)>(QUEUE);
        let counts = Arc::new(HookCounts::default());
        let shared = counts.clone();
        std::thread::Builder::new()
            .name("guard-hook".into())
            .spawn(move || {
                let mut bucket = TokenBucket::new(HOOK_BURST, HOOK_REFILL);
                for (record, env, boot_ns) in rx {
                    let age = crate::host::clock::WallClock::boot_ns_now().saturating_sub(boot_ns);
                    if age > HOOK_MAX_AGE.as_nanos() as u64 {
                        shared.stale.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    if !bucket.take(Instant::now()) {
                        shared.skipped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    shared.run.fetch_add(1, Ordering::Relaxed);
                    if let Err(why) = run(&command, &record, &env, HOOK_TIMEOUT) {
                        shared.failed.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!("--on-alert hook for a {} record: {why}", record["kind"]);
                    }
                }
            })?;
        Ok(Self { tx, counts })
    }

    /// Queues a hook for `record` (an alert or an action) made at `boot_ns`,
    /// with its environment.
    pub fn fire(&self, record: Value, env: Env, boot_ns: u64) {
        if self.tx.try_send((record, env, boot_ns)).is_err() {
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

/// What a hook's environment says of a record (its type gives it: see
/// `output::record::Record::hook`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HookSubject {
    /// The incident the record belongs to, and its severity's name.
    pub incident: Option<String>,
    pub severity: Option<&'static str>,
    pub detector: Option<Detector>,
    /// The rule's name, as records write it.
    pub rule: Option<&'static str>,
    pub action: Option<ActionKind>,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// A crash loop's supervisor (`pid` and `comm` are its program's).
    pub supervisor_pid: Option<u32>,
    pub cgroup: Option<String>,
}

/// The environment a hook gets from its record: its kind and time, and
/// what the record's type says of it (its offender's pid, comm and cgroup,
/// else the record's cgroup). Names that are not UTF-8 come lossy, as in
/// the record's JSON.
pub fn environment(kind: &str, time: &str, host: &str, subject: &HookSubject) -> Env {
    [
        ("GUARD_KIND", Some(kind.to_owned())),
        ("GUARD_TIME", Some(time.to_owned())),
        ("GUARD_HOST", Some(host.to_owned())),
        ("GUARD_INCIDENT", subject.incident.clone()),
        ("GUARD_SEVERITY", subject.severity.map(str::to_owned)),
        (
            "GUARD_DETECTOR",
            subject.detector.map(|d| d.name().to_owned()),
        ),
        ("GUARD_RULE", subject.rule.map(str::to_owned)),
        ("GUARD_ACTION", subject.action.map(|a| a.name().to_owned())),
        ("GUARD_PID", subject.pid.map(|p| p.to_string())),
        (
            "GUARD_SUPERVISOR_PID",
            subject.supervisor_pid.map(|p| p.to_string()),
        ),
        (
            "GUARD_COMM",
            subject
                .comm
                .as_deref()
                .map(|c| crate::host::cgroup::lossy(c).into_owned()),
        ),
        (
            "GUARD_CGROUP",
            subject
                .cgroup
                .as_deref()
                .map(|c| crate::host::cgroup::lossy(c).into_owned()),
        ),
    ]
    .into_iter()
    .filter_map(|(k, v)| Some((k, v?)))
    .collect()
}

/// A hook's environment variables.
pub type Env = Vec<(&'static str, String)>;

fn run(command: &HookCommand, record: &Value, env: &Env, timeout: Duration) -> Result<(), String> {
    let mut cmd = match command {
        HookCommand::Shell(line) => {
            let mut cmd = Command::new(SHELL);
            cmd.arg("-c").arg(line);
            cmd
        }
        HookCommand::Exec(argv) => {
            let mut cmd = Command::new(&argv[0]);
            cmd.args(&argv[1..]);
            cmd
        }
    };
    let name = command.describe();
    cmd.env_clear()
        .env("PATH", HOOK_PATH)
        .env("LANG", "C.UTF-8")
        .env("HOME", "/")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir("/")
        .process_group(0)
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
        .map_err(|e| format!("cannot start {name}: {e}"))?;
    // The group's id is the shell's pid (process_group(0)).
    let group = child.id() as libc::pid_t;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its stdin is no failure.
        let _ = writeln!(stdin, "{record}");
    }
    let deadline = Instant::now() + timeout;
    let kill_group = || {
        // SAFETY: signals the hook's own process group, made for it above.
        unsafe { libc::kill(-group, libc::SIGKILL) };
    };
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                // What it left behind in its group goes with it.
                kill_group();
                return if status.success() {
                    Ok(())
                } else {
                    Err(format!("{name} exited with {status}"))
                };
            }
            Ok(None) if Instant::now() >= deadline => {
                kill_group();
                let _ = child.wait();
                return Err(format!(
                    "{name} ran longer than {} s; its process group was killed",
                    timeout.as_secs()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                kill_group();
                return Err(format!("waiting for {name}: {e}"));
            }
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
    fn a_hook_and_everything_it_started_end_at_the_limit() {
        let marker = format!("guard-hook-test-{}", std::process::id());
        let record = serde_json::json!({"kind": "alert", "time": "2026-01-01T00:00:00Z"});
        // The shell leaves a sleep in the background, and waits on another.
        let command = format!("exec -a {marker} sleep 300 & sleep 300");
        let started = Instant::now();
        let err = run(
            &HookCommand::Shell(command),
            &record,
            &Env::new(),
            Duration::from_millis(300),
        )
        .expect_err("killed");
        assert!(err.contains("process group was killed"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(200));
        let left = std::process::Command::new("pgrep")
            .args(["-f", &marker])
            .output()
            .expect("pgrep");
        assert!(left.stdout.is_empty(), "left running: {:?}", left.stdout);
    }

    #[test]
    fn a_hook_sees_only_its_own_environment() {
        let dir = std::env::temp_dir().join(format!("guard-hook-env-{}", std::process::id()));
        let record = serde_json::json!({"kind": "alert", "time": "2026-01-01T00:00:00Z"});
        // SAFETY: a variable only this test reads; set before the hook runs.
        unsafe { std::env::set_var("GUARD_TEST_SECRET", "1") };
        let env = environment(
            "alert",
            "2026-01-01T00:00:00Z",
            "node-1",
            &HookSubject::default(),
        );
        run(
            &HookCommand::Shell(format!("env > {}", dir.display())),
            &record,
            &env,
            HOOK_TIMEOUT,
        )
        .expect("env");
        let env = std::fs::read_to_string(&dir).expect("env output");
        let _ = std::fs::remove_file(&dir);
        assert!(!env.contains("GUARD_TEST_SECRET"), "{env}");
        assert!(env.contains(&format!("PATH={HOOK_PATH}")), "{env}");
        assert!(env.contains("GUARD_TIME=2026-01-01T00:00:00Z"), "{env}");
    }

    #[test]
    fn a_record_that_waited_too_long_is_dropped_not_run() {
        let hooks = Hooks::spawn(HookCommand::Shell("exit 0".into())).expect("spawn");
        let now = crate::host::clock::WallClock::boot_ns_now();
        let record = serde_json::json!({"kind": "alert"});
        hooks.fire(
            record.clone(),
            Env::new(),
            now.saturating_sub(2 * HOOK_MAX_AGE.as_nanos() as u64),
        );
        hooks.fire(record, Env::new(), now);
        let deadline = Instant::now() + Duration::from_secs(10);
        while hooks.counts.run.load(Ordering::Relaxed) < 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(hooks.counts.stale.load(Ordering::Relaxed), 1);
        assert_eq!(hooks.counts.run.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn hook_programs_must_be_roots() {
        assert!(check_command("logger -t guard").is_ok());
        assert!(check_command("/usr/bin/logger -t guard").is_ok());
        let script = std::env::temp_dir().join(format!("guard-hook-{}.sh", std::process::id()));
        std::fs::write(&script, "#!/bin/sh\n").expect("write");
        let err = check_command(&format!("sh {}", script.display())).expect_err("in /tmp");
        let _ = std::fs::remove_file(&script);
        assert!(err.contains("writable by anyone"), "{err}");
    }

    #[test]
    fn the_environment_names_the_record_and_its_offender() {
        let subject = HookSubject {
            detector: Some(Detector::Fork),
            rule: Some("explosion"),
            action: Some(ActionKind::Kill),
            pid: Some(4242),
            comm: Some("bash".into()),
            cgroup: Some("/sys/fs/cgroup/ci".into()),
            incident: Some("20260101T000000Z-3".into()),
            severity: Some("critical"),
            supervisor_pid: None,
        };
        let env = environment("action", "2026-01-01T00:00:00Z", "node-1", &subject);
        assert!(!env.iter().any(|(k, _)| *k == "GUARD_SUPERVISOR_PID"));
        for pair in [
            ("GUARD_KIND", "action"),
            ("GUARD_HOST", "node-1"),
            ("GUARD_INCIDENT", "20260101T000000Z-3"),
            ("GUARD_SEVERITY", "critical"),
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

    #[test]
    fn a_program_hook_runs_without_a_shell_with_the_record_on_stdin() {
        let out = std::env::temp_dir().join(format!("guard-hook-exec-{}", std::process::id()));
        let record = serde_json::json!({"kind": "action", "time": "2026-01-01T00:00:00Z"});
        // tee: a program, its arguments given as they are (no word
        // splitting, no glob: the `*` reaches it as a file name).
        let star = format!("{}-*", out.display());
        let argv = vec![
            "/usr/bin/tee".to_owned(),
            out.display().to_string(),
            star.clone(),
        ];
        run(&HookCommand::Exec(argv), &record, &Env::new(), HOOK_TIMEOUT).expect("tee");
        let got = std::fs::read_to_string(&out).expect("tee's file");
        let starred = std::fs::read_to_string(&star).expect("the literal * file");
        let _ = std::fs::remove_file(&out);
        let _ = std::fs::remove_file(&star);
        assert_eq!(got, format!("{record}\n"));
        assert_eq!(starred, got);
    }

    #[test]
    fn a_program_hook_must_be_an_absolute_roots_executable() {
        let exec = |argv: &[&str]| {
            HookCommand::Exec(argv.iter().map(|a| (*a).to_owned()).collect()).check()
        };
        assert!(exec(&["/usr/bin/logger", "-t", "guard"]).is_ok());
        let (why, overridable) = exec(&["logger"]).expect_err("relative");
        assert!(why.contains("absolute path") && !overridable, "{why}");
        let (why, _) = exec(&["/nonexistent/hook"]).expect_err("missing");
        assert!(why.contains("No such file"), "{why}");
        let script = std::env::temp_dir().join(format!("guard-hook-x-{}", std::process::id()));
        std::fs::write(&script, "#!/bin/sh\n").expect("write");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let verdict = exec(&[script.to_str().expect("utf8")]);
        let (why, _) = verdict.expect_err("not executable");
        assert!(why.contains("not an executable"), "{why}");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let verdict = exec(&[script.to_str().expect("utf8")]);
        let _ = std::fs::remove_file(&script);
        let (why, overridable) = verdict.expect_err("in /tmp");
        assert!(why.contains("refused") && overridable, "{why}");
    }
}
