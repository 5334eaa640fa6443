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
    assert_eq!(action["outcome"]["spared"], 0, "{action}");
    cg.wait_until_gone("sshd", Duration::from_secs(10));
    assert_eq!(cg.pids_refused(), 0, "the bomb reached pids.max");
    drop(agent.stop());
}
