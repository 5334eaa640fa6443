//! The rarer kernel events, provoked for real: an OOM kill inside a memory
//! cgroup with a small limit (hung tasks: see blocked.rs).

use guard_tests::{Agent, TestCgroup, num};

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
    assert_eq!(oom["memory_cgroup"], memory.as_str(), "{oom}");
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
