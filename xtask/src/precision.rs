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
    Quiet,
    Act,
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
            "crash loop restarted by a shell",
            64,
            256 * MIB,
            format!("for i in $(seq 100); do {w} fail 3 20; done"),
            10,
        ),
        harm(
            "crash loop under while true",
            64,
            256 * MIB,
            "while true; do python3 -c 'import os; os.abort()'; done".into(),
            15,
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
}

fn spawn(cg: &TestCgroup, script: &str) -> Result<Child> {
    cg.command("/bin/bash")
        .args(["-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
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
        "--events",
        "oom_kill",
    ]);
    let mut note = String::new();
    match &item.run {
        Run::Script(script) => {
            let started = Instant::now();
            let mut child = spawn(&cg, script)?;
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
            let mut child = spawn(&cg, script)?;
            let _ = agent.try_wait_for(*secs, |r| r["kind"] == "action" && r["dry_run"] == false);
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
        let row = (
            item.name.clone(),
            match item.expect {
                Expect::Quiet => "quiet",
                Expect::Act => "act",
            },
            did.join("; "),
            if ok { "ok" } else { "WRONG" },
        );
        eprintln!("  -> {} ({})", row.2, row.3);
        rows.push(row);
    }
    println!("precision and recall, every detector enforcing (kill; crash loops: stop):");
    println!("| workload | expected | what guard did | verdict |");
    println!("|---|---|---|---|");
    for (name, expect, did, verdict) in &rows {
        println!("| {name} | {expect} | {did} | {verdict} |");
    }
    let ordinary = items.iter().filter(|i| i.expect == Expect::Quiet).count();
    let quiet_ok = rows
        .iter()
        .filter(|r| r.1 == "quiet" && r.3 == "ok")
        .count();
    println!(
        "ordinary work left alone: {quiet_ok}/{ordinary}; harmful shapes caught: {}/{} (target: all of both)",
        passed - quiet_ok,
        items.len() - ordinary
    );
    println!(
        "{}",
        serde_json::json!({"bench": "precision", "items": items.len(), "passed": passed,
            "quiet_ok": quiet_ok, "ordinary": ordinary})
    );
    Ok(())
}
