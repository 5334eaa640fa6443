//! `cargo xtask bench --only precision`: guard on a corpus of ordinary
//! heavy work, which it must leave alone, and on the shapes it must catch.
//!
//! Every item runs in a cgroup of its own (pids.max and a memory limit),
//! with the agent scoped to it and every detector enforcing for real:
//! `--fork-action kill --mem-action kill --crashloop-action stop`. That is
//! stronger than `--dry-run`, which switches the fork probe's own budgets
//! off: here a rule that misfires kills the build, in the kernel or in the
//! agent. For each item the bench counts alerts and actions (and the fork
//! probe's condemnations) and prints one table: workload, expected, what
//! guard did, verdict. Ordinary work must raise nothing; a harmful shape
//! must be acted on before its limit refuses anything.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use guard_tests::{Agent, TestCgroup, workload_bin};
use serde_json::Value;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Nothing: no alert, no action.
    Quiet,
    /// Acted on before its limit refused anything.
    Act,
    /// Reported (an alert of this detector), nobody signalled.
    Report(&'static str),
}

impl Expect {
    fn name(self) -> &'static str {
        match self {
            Expect::Quiet => "quiet",
            Expect::Act => "act",
            Expect::Report(_) => "report",
        }
    }
}

/// How an item's workload runs.
enum Run {
    /// A shell script (bash), waited for up to the timeout; it must succeed.
    Script(String),
    /// A harmful shape: started, given this long, then the cgroup emptied.
    Harm(String, Duration),
}

struct Item {
    name: String,
    expect: Expect,
    pids_max: u32,
    memory_max: u64,
    run: Run,
}

const MIB: u64 = 1 << 20;

fn quiet(name: &str, pids_max: u32, memory_max: u64, script: String) -> Item {
    Item {
        name: name.into(),
        expect: Expect::Quiet,
        pids_max,
        memory_max,
        run: Run::Script(script),
    }
}

fn harm(name: &str, pids_max: u32, memory_max: u64, script: String, secs: u64) -> Item {
    Item {
        name: name.into(),
        expect: Expect::Act,
        pids_max,
        memory_max,
        run: Run::Harm(script, Duration::from_secs(secs)),
    }
}

/// A shape to report, not act on: run for `secs`, then the cgroup emptied.
fn report(
    name: &str,
    detector: &'static str,
    (pids_max, memory_max): (u32, u64),
    script: String,
    secs: u64,
) -> Item {
    Item {
        name: name.into(),
        expect: Expect::Report(detector),
        pids_max,
        memory_max,
        run: Run::Harm(script, Duration::from_secs(secs)),
    }
}

/// Files the corpus needs, made once under `dir`: a crate with registry
/// dependencies, a C project, a git bundle.
fn prepare(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    // A crate with many dependencies, all in the registry cache already
    // (they are guard's own): built offline.
    let krate = dir.join("crate");
    std::fs::create_dir_all(krate.join("src"))?;
    std::fs::write(
        krate.join("Cargo.toml"),
        "[package]\nname = \"corpus\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\n\
         clap = { version = \"4.5\", features = [\"derive\"] }\nserde = { version = \"1\", features = [\"derive\"] }\n\
         serde_json = \"1\"\nregex = \"1\"\ntokio = { version = \"1\", features = [\"rt-multi-thread\", \"macros\", \"time\"] }\n\
         aya = { version = \"=0.14.0\", default-features = false }\nhumantime = \"2\"\nanyhow = \"1\"\n\n[workspace]\n",
    )?;
    std::fs::write(
        krate.join("src/main.rs"),
        "fn main() { let r = regex::Regex::new(\"a+\").unwrap(); println!(\"{}\", serde_json::json!(r.is_match(\"aa\"))); }\n",
    )?;
    // Copy guard's lock file so the same versions resolve offline.
    let lock = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock");
    std::fs::copy(lock, krate.join("Cargo.lock")).context("copying Cargo.lock")?;
    // A C project of 400 files.
    let c = dir.join("c");
    std::fs::create_dir_all(&c)?;
    let mut objects = String::new();
    let mut calls = String::new();
    for i in 0..400 {
        std::fs::write(
            c.join(format!("f{i}.c")),
            format!(
                "int f{i}(int x) {{ int s = 0; for (int k = 0; k < x; k++) s += k * {i}; return s; }}\n"
            ),
        )?;
        objects.push_str(&format!(" f{i}.o"));
        calls.push_str(&format!("int f{i}(int); "));
    }
    std::fs::write(
        c.join("main.c"),
        format!("{calls}\nint main(void) {{ return f1(3) == 3 ? 0 : 1; }}\n"),
    )?;
    std::fs::write(
        c.join("Makefile"),
        format!(
            "prog: main.o{objects}\n\tcc -o $@ $^\n%.o: %.c\n\tcc -O1 -c -o $@ $<\nclean:\n\trm -f *.o prog\n"
        ),
    )?;
    // supervisord, from PyPI, in a virtualenv of its own; and a
    // supervisord.conf and a runit service directory for a program that
    // dies 20 ms after each start.
    let venv = dir.join("venv");
    if !venv.join("bin/supervisord").exists() {
        let status = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()?;
        let pip = Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "supervisor"])
            .status()?;
        if !status.success() || !pip.success() {
            bail!(
                "installing supervisord from PyPI into {} failed",
                venv.display()
            );
        }
    }
    let w = workload_bin();
    std::fs::write(
        dir.join("supervisord.conf"),
        format!(
            "[supervisord]\nnodaemon=true\nlogfile=/dev/null\nlogfile_maxbytes=0\npidfile={d}/supervisord.pid\n\
             [program:crashy]\ncommand={w} fail 3 20\nautorestart=true\nstartretries=1000\n\
             stdout_logfile=/dev/null\nstderr_logfile=/dev/null\n",
            d = dir.display(),
            w = w.display()
        ),
    )?;
    let service = dir.join("runit-crashy");
    std::fs::create_dir_all(&service)?;
    std::fs::write(
        service.join("run"),
        format!("#!/bin/sh\nexec {} fail 3 20\n", w.display()),
    )?;
    std::fs::set_permissions(
        service.join("run"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    // A git repository of 4000 files and 40 commits, as a bundle.
    let bundle = dir.join("repo.bundle");
    if !bundle.exists() {
        let repo = dir.join("repo");
        let script = format!(
            "set -e; rm -rf {r}; mkdir -p {r}; cd {r}; git init -q; \
             git config user.email b@b; git config user.name bench; \
             for c in $(seq 1 40); do for f in $(seq 1 100); do \
               d=d$(( (c * 100 + f) % 50 )); mkdir -p $d; echo $c$f > $d/f$c-$f.txt; done; \
               git add -A; git commit -q -m c$c; done; \
             git bundle create -q {b} --all",
            r = repo.display(),
            b = bundle.display()
        );
        let status = Command::new("bash").args(["-c", &script]).status()?;
        if !status.success() {
            bail!("making the git bundle failed");
        }
    }
    Ok(())
}

fn corpus(dir: &Path) -> Vec<Item> {
    let w = workload_bin();
    let w = w.display();
    let d = dir.display();
    let mut items = vec![
        quiet(
            "cargo build -j 8 (8 direct deps, offline)",
            4096,
            4096 * MIB,
            format!(
                "cd {d}/crate && CARGO_TARGET_DIR={d}/crate/target cargo build --offline -q -j 8 && \
                 rm -rf {d}/crate/target"
            ),
        ),
        quiet(
            "make -j 32, 400 C files",
            4096,
            2048 * MIB,
            format!("make -s -C {d}/c clean && make -s -j 32 -C {d}/c"),
        ),
    ];
    for n in [32, 64, 128] {
        items.push(quiet(
            &format!("xargs -P {n}, 3000 short tasks"),
            4096,
            1024 * MIB,
            format!("seq 1 3000 | xargs -P {n} -n 1 sh -c 'sleep 0.0$(( $0 % 5 ))'"),
        ));
    }
    items.extend([
        quiet(
            "Python multiprocessing.Pool(64)",
            4096,
            4096 * MIB,
            "python3 -c 'import multiprocessing as m\nwith m.Pool(64) as p: print(sum(p.map(abs, range(-20000, 20000))))' > /dev/null".into(),
        ),
        quiet(
            "Python ProcessPoolExecutor(64)",
            4096,
            4096 * MIB,
            "python3 -c 'from concurrent.futures import ProcessPoolExecutor as E\nwith E(64) as e: print(sum(e.map(abs, range(-5000, 5000), chunksize=50)))' > /dev/null".into(),
        ),
        quiet(
            "worker pool: 200 long-lived at once",
            4096,
            1024 * MIB,
            "for i in $(seq 200); do sleep 4 & done; wait".into(),
        ),
        quiet(
            "cron-like burst: 500 short jobs",
            4096,
            1024 * MIB,
            "for i in $(seq 500); do sh -c 'date > /dev/null' & done; wait".into(),
        ),
        quiet(
            "script of failing grep/test/diff/false",
            512,
            256 * MIB,
            "for i in $(seq 20); do grep -q no-such-text /etc/hostname; test -e /nonexistent; \
             diff /etc/hostname /etc/passwd > /dev/null; false; done; exit 0"
                .into(),
        ),
        quiet(
            "apt-get install/purge hello",
            1024,
            1024 * MIB,
            "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends hello > /dev/null && \
             hello > /dev/null && DEBIAN_FRONTEND=noninteractive apt-get purge -y -q hello > /dev/null"
                .into(),
        ),
        quiet(
            "git clone + checkout, 4000 files",
            1024,
            1024 * MIB,
            format!(
                "rm -rf {d}/clone && git clone -q {d}/repo.bundle {d}/clone && \
                 git -C {d}/clone checkout -q HEAD~20 && git -C {d}/clone log --oneline | wc -l > /dev/null && rm -rf {d}/clone"
            ),
        ),
        quiet(
            "retry: until curl; do sleep 0.5; done, service up after 20 s",
            256,
            512 * MIB,
            format!(
                "(sleep 20; exec python3 -m http.server -b 127.0.0.1 {port} -d {d}) & \
                 until curl -s -o /dev/null http://127.0.0.1:{port}/; do sleep 0.5; done; kill $!; exit 0",
                port = 20_000 + std::process::id() % 20_000
            ),
        ),
        quiet(
            "backoff retry: 7 tries 0.1 to 6.4 s apart, never up",
            256,
            256 * MIB,
            "for d in 0.1 0.2 0.4 0.8 1.6 3.2 6.4; do curl -s -o /dev/null http://127.0.0.1:1/ && break; \
             sleep $d; done; exit 0"
                .into(),
        ),
        quiet(
            "checking script: ls and stat of missing files, 2000 rounds",
            256,
            256 * MIB,
            format!(
                "for i in $(seq 2000); do ls {d}/missing > /dev/null 2>&1; stat {d}/missing > /dev/null 2>&1; done; exit 0"
            ),
        ),
        quiet(
            "status polls: pg_isready, systemctl is-active, 0.2 s apart for 30 s",
            256,
            256 * MIB,
            "for i in $(seq 150); do pg_isready -q -h 127.0.0.1 -p 1; \
             systemctl is-active --quiet nosuch.service 2> /dev/null; sleep 0.2; done; exit 0"
                .into(),
        ),
        quiet(
            "slow ramp: a pool scaling to 200 workers over 2 min, held 90 s",
            1024,
            1024 * MIB,
            "for i in $(seq 200); do sleep 400 & sleep 0.6; done; sleep 90; kill $(jobs -p); wait; exit 0".into(),
        ),
        report(
            "crash loop under supervisord (PyPI), its backoff",
            "crashloop",
            (256, 512 * MIB),
            format!("exec {d}/venv/bin/supervisord -c {d}/supervisord.conf"),
            45,
        ),
        report(
            "crash loop under runit's runsv (1 s between starts)",
            "crashloop",
            (64, 256 * MIB),
            format!("exec runsv {d}/runit-crashy"),
            30,
        ),
        harm("bash fork bomb", 1000, 512 * MIB, ":(){ :|:& };:".into(), 5),
        harm("sh (dash) fork bomb", 1000, 512 * MIB, "sh -c 'f(){ f|f& };f'".into(), 5),
        harm(
            "Python fork bomb",
            1000,
            1024 * MIB,
            "python3 -c 'import os\nwhile True:\n    os.fork()'".into(),
            5,
        ),
        harm("thread bomb", 1000, 1024 * MIB, format!("{w} threadbomb"), 5),
        harm(
            "spawn storm: while :; do sleep 1000 & done",
            1000,
            1024 * MIB,
            "while :; do sleep 1000 & done".into(),
            5,
        ),
        harm(
            "slow leak: +10 sleeps a second",
            200,
            512 * MIB,
            "while :; do sleep 1000 & sleep 0.1; done".into(),
            25,
        ),
        harm(
            "memory runaway: 200 MiB/s toward 2 GiB",
            64,
            1024 * MIB,
            format!("{w} grow 200 2048 60"),
            15,
        ),
        harm(
            "leak: +1 helper a second, pids.max far (8192)",
            8192,
            1024 * MIB,
            "while :; do sleep 1000 & sleep 1; done".into(),
            200,
        ),
        harm(
            "leak: +2 helpers a second, pids.max far (8192)",
            8192,
            1024 * MIB,
            "while :; do sleep 1000 & sleep 0.5; done".into(),
            200,
        ),
        harm(
            "crash loop restarted by a shell: a server dying in 20 ms",
            64,
            256 * MIB,
            format!("for i in $(seq 100000); do {w} fail 3 20; done"),
            150,
        ),
        harm(
            "crash loop under while true: Python aborting",
            64,
            256 * MIB,
            "while true; do python3 -c 'import os; os.abort()'; done".into(),
            150,
        ),
    ]);
    items
}

/// What guard did about one item.
struct Outcome {
    alerts: Vec<String>,
    actions: Vec<String>,
    condemned: usize,
    refused: u64,
    oom_kills: u64,
    note: String,
    /// From the workload's start to the first alert, and to the first
    /// action (harmful and reported shapes).
    to_alert: Option<Duration>,
    to_action: Option<Duration>,
}

/// Starts `script`; its stderr is kept (to explain a failure) only for an
/// ordinary workload, which ends by itself. A harmful shape's is
/// discarded: a crash loop's shell reports every crash there, and a pipe
/// nobody reads would fill and stall the loop.
fn spawn(cg: &TestCgroup, script: &str, keep_stderr: bool) -> Result<Child> {
    cg.command("/bin/bash")
        .args(["-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(if keep_stderr {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .spawn()
        .context("starting the workload")
}

fn run_item(item: &Item) -> Result<Outcome> {
    let slug: String = item
        .name
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(12)
        .collect();
    let cg = TestCgroup::new(&format!("prec-{slug}"), item.pids_max, item.memory_max);
    let scope = cg.pids_dir().to_string_lossy().into_owned();
    let mut agent = Agent::start(&[
        "--cgroup",
        &scope,
        "--fork-action",
        "kill",
        "--mem-action",
        "kill",
        "--crashloop-action",
        "stop",
        "--leak-action",
        "kill",
        "--events",
        "oom_kill",
    ]);
    let (mut to_alert, mut to_action) = (None, None);
    let mut note = String::new();
    match &item.run {
        Run::Script(script) => {
            let started = Instant::now();
            let mut child = spawn(&cg, script, true)?;
            let deadline = started + Duration::from_secs(600);
            let status = loop {
                if let Some(status) = child.try_wait()? {
                    break Some(status);
                }
                if Instant::now() > deadline {
                    break None;
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            match status {
                Some(s) if s.success() => {
                    note = format!("ran to its end in {:.1} s", started.elapsed().as_secs_f64());
                }
                Some(s) => {
                    let mut err = String::new();
                    if let Some(mut e) = child.stderr.take() {
                        let _ = std::io::Read::read_to_string(&mut e, &mut err);
                    }
                    note = format!("FAILED ({s}): {}", err.lines().last().unwrap_or(""));
                }
                None => note = "did not finish in 600 s".into(),
            }
        }
        Run::Harm(script, secs) => {
            let started = Instant::now();
            let mut child = spawn(&cg, script, false)?;
            let deadline = started + *secs;
            let left = || deadline.saturating_duration_since(Instant::now());
            let acted = |r: &Value| r["kind"] == "action" && r["dry_run"] == false;
            let first = agent.try_wait_for(left(), |r| r["kind"] == "alert" || acted(r));
            if let Some(first) = &first {
                to_alert = Some(started.elapsed());
                if acted(first) {
                    to_action = to_alert;
                }
            }
            if item.expect == Expect::Act && to_action.is_none() && first.is_some() {
                if agent.try_wait_for(left(), acted).is_some() {
                    to_action = Some(started.elapsed());
                }
            } else if matches!(item.expect, Expect::Report(_)) {
                // Reported: the shape runs its course, and nothing may act.
                if agent.try_wait_for(left(), acted).is_some() {
                    to_action = Some(started.elapsed());
                }
            }
            std::thread::sleep(Duration::from_millis(300));
            cg.kill_all();
            let _ = child.wait();
        }
    }
    let stopped = agent.stop();
    let describe = |r: &Value| {
        format!(
            "{}/{}",
            r["detector"].as_str().unwrap_or("?"),
            r["rule"].as_str().unwrap_or("?")
        )
    };
    let alerts = stopped.of_kind("alert").map(describe).collect();
    let actions = stopped
        .of_kind("action")
        .filter(|r| r["action"] != "log")
        .map(|r| format!("{} {}", describe(r), r["action"].as_str().unwrap_or("?")))
        .collect();
    Ok(Outcome {
        alerts,
        actions,
        condemned: stopped.of_kind("condemned").count(),
        refused: cg.pids_refused(),
        oom_kills: cg.oom_kills(),
        note,
        to_alert,
        to_action,
    })
}

pub fn bench(target: &Path) -> Result<()> {
    let dir: PathBuf = target.join("precision-corpus");
    prepare(&dir)?;
    let items = corpus(&dir);
    let mut rows = Vec::new();
    let mut passed = 0;
    for item in &items {
        eprintln!("precision: {} ...", item.name);
        let o = run_item(item)?;
        let acted = !o.actions.is_empty() || o.condemned > 0;
        let ok = match item.expect {
            Expect::Quiet => o.alerts.is_empty() && !acted && !o.note.starts_with("FAILED"),
            Expect::Act => acted && o.refused == 0 && o.oom_kills == 0,
            Expect::Report(detector) => {
                !acted
                    && o.alerts
                        .iter()
                        .any(|a| a.starts_with(&format!("{detector}/")))
            }
        };
        passed += usize::from(ok);
        let mut did = Vec::new();
        if !o.actions.is_empty() {
            did.push(o.actions.join(", "));
        } else if o.condemned > 0 {
            did.push(format!("condemned by the fork probe ({}x)", o.condemned));
        }
        if !o.alerts.is_empty() && o.actions.is_empty() {
            did.push(format!("alerts: {}", o.alerts.join(", ")));
        }
        if did.is_empty() {
            did.push("nothing".into());
        }
        if o.refused > 0 {
            did.push(format!("pids.max refused {}", o.refused));
        }
        if o.oom_kills > 0 {
            did.push(format!("{} OOM kills", o.oom_kills));
        }
        if !o.note.is_empty() {
            did.push(o.note.clone());
        }
        let secs =
            |d: Option<Duration>| d.map_or("-".to_owned(), |d| format!("{:.1} s", d.as_secs_f64()));
        let row = (
            item.name.clone(),
            item.expect.name(),
            did.join("; "),
            if ok { "ok" } else { "WRONG" },
            secs(o.to_alert),
            secs(o.to_action),
        );
        eprintln!("  -> {} ({})", row.2, row.3);
        rows.push(row);
    }
    println!(
        "precision and recall, every detector enforcing (kill; crash loops: stop; leaks: kill):"
    );
    println!("| workload | expected | what guard did | verdict | to alert | to action |");
    println!("|---|---|---|---|---|---|");
    for (name, expect, did, verdict, alert, action) in &rows {
        println!("| {name} | {expect} | {did} | {verdict} | {alert} | {action} |");
    }
    let count = |expect: &str, verdict: Option<&str>| {
        rows.iter()
            .filter(|r| r.1 == expect && verdict.is_none_or(|v| r.3 == v))
            .count()
    };
    let (ordinary, quiet_ok) = (count("quiet", None), count("quiet", Some("ok")));
    let (harmful, caught) = (count("act", None), count("act", Some("ok")));
    let (reported, reported_ok) = (count("report", None), count("report", Some("ok")));
    // Precision: of the shapes guard flagged, the harmful ones (ordinary
    // work alerted on or acted on counts against it); recall: of the
    // harmful shapes, those it acted on in time.
    let false_flags = ordinary - quiet_ok;
    let precision = caught as f64 / (caught + false_flags).max(1) as f64;
    let recall = caught as f64 / harmful.max(1) as f64;
    println!(
        "ordinary work left alone: {quiet_ok}/{ordinary}; harmful shapes caught: {caught}/{harmful}; \
         reported, not acted on: {reported_ok}/{reported} (target: all of each); \
         precision {precision:.2}, recall {recall:.2}"
    );
    println!(
        "{}",
        serde_json::json!({"bench": "precision", "items": items.len(), "passed": passed,
            "quiet_ok": quiet_ok, "ordinary": ordinary, "caught": caught, "harmful": harmful,
            "reported_ok": reported_ok, "reported": reported,
            "precision": precision, "recall": recall})
    );
    Ok(())
}
