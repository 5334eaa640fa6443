//! guard on a Kubernetes node, played with cgroups laid out as kubelet
//! lays them out (`kubepods/burstable/pod<uid>/<container>`, inside this
//! test's own cgroup) and a pod log directory as kubelet keeps it
//! (`<namespace>_<name>_<uid>`): records name the pod, and a `namespace`
//! policy opts one namespace into `kill` while the default stays `log`.

use std::time::Duration;

use guard_tests::{Agent, RootDir, TestCgroup};
use serde_json::Value;

const BOMB: &str = ":(){ :|:& };:";

fn uid(last: u32) -> String {
    format!("{:08x}-2b4a-4c6d-9e8f-{last:012x}", std::process::id())
}

/// A record's offender, whose pod fields (pod_uid, container_id, qos,
/// namespace, pod) sit beside its pid (alerts and actions alike).
fn pod(record: &Value) -> &Value {
    &record["offender"]
}

#[test]
fn pods_are_named_and_a_namespace_policy_opts_one_namespace_into_kill() {
    let cg = TestCgroup::new("kube", 900, 2 << 30);
    let (batch, web) = (uid(1), uid(2));
    let logs = RootDir::new("pod-logs");
    // Kubelet's directory is 0755; RootDir's 0700 is as much root's alone.
    for (ns, name, uid) in [("batch-7", "job-x", &batch), ("web", "front", &web)] {
        std::fs::create_dir(logs.path.join(format!("{ns}_{name}_{uid}"))).expect("mkdir");
    }
    let scope = cg.pids_dir().to_str().expect("utf8").to_owned();
    let dir = RootDir::new("kube-config");
    let config = dir.path.join("guard.toml");
    std::fs::write(
        &config,
        format!(
            "fork-action = \"log\"\ncgroup = [{scope:?}]\npod-logs = {:?}\nevents = [\"condemned\"]\n\n\
             [[policy]]\nnamespace = \"batch-*\"\nfork-action = \"kill\"\n",
            logs.path.to_str().expect("utf8")
        ),
    )
    .expect("write config");
    let container = "ab".repeat(32);
    let mut agent = Agent::start(&["--config", config.to_str().expect("utf8")]);

    // Pods started after the agent, as on a node: the web pod's bomb is
    // reported (named by namespace and pod) and left alone.
    let web_pod = cg.child(&format!("kubepods/burstable/pod{web}/{container}"), 200);
    let mut web_bomb = web_pod.spawn_bash(BOMB);
    let alert = agent.wait_for(Duration::from_secs(20), "the web pod's fork alert", |r| {
        r["kind"] == "alert" && r["detector"] == "fork" && pod(r)["pod_uid"] == web.as_str()
    });
    assert_eq!(pod(&alert)["namespace"], "web", "{alert}");
    assert_eq!(pod(&alert)["pod"], "front", "{alert}");
    assert_eq!(pod(&alert)["qos"], "Burstable", "{alert}");
    assert_eq!(pod(&alert)["container_id"], container.as_str(), "{alert}");
    assert!(
        alert["action"].is_null() || alert["action"] == "log",
        "{alert}"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        web_pod.procs().len() > 50,
        "the web bomb, under log, must still run: {} members",
        web_pod.procs().len()
    );
    web_pod.kill_all();
    let _ = web_bomb.wait();
    drop(web_pod);

    // The batch pod's bomb is killed, in the kernel: the pods' root is
    // left alone by the fork probe (the default is log), the batch pod
    // gets the probe's own action back when its first process is seen.
    // The pod's verdict reaches the probe when the agent reads its first
    // process's event, which may sit behind the web bomb's backlog: the
    // container's first process starts, then the bomb a second later (a
    // bomb inside that gap is the agent's to kill, as the web pod's alert
    // shows the agent path works).
    let batch_pod = cg.child(&format!("kubepods/burstable/pod{batch}/{container}"), 600);
    let mut first = batch_pod.spawn_bash("sleep 60");
    std::thread::sleep(Duration::from_secs(2));
    let mut batch_bomb = batch_pod.spawn_bash(BOMB);
    let action = agent.wait_for(Duration::from_secs(20), "the batch pod's kill", |r| {
        r["kind"] == "action" && r["detector"] == "fork"
    });
    assert_eq!(action["action"], "kill", "{action}");
    assert_eq!(pod(&action)["namespace"], "batch-7", "{action}");
    assert_eq!(pod(&action)["pod"], "job-x", "{action}");
    assert_eq!(action["outcome"]["contained"], true, "{action}");
    let _ = batch_bomb.wait();
    let _ = first.kill();
    let _ = first.wait();
    batch_pod.wait_until_gone("bash", Duration::from_secs(10));
    let stopped = agent.stop();
    let batch_dir = batch_pod.pids_dir().to_str().expect("utf8").to_owned();
    let condemned: Vec<&Value> = stopped.of_kind("condemned").collect();
    assert!(
        condemned
            .iter()
            .any(|c| c["cgroup"].as_str() == Some(batch_dir.as_str())),
        "the fork probe condemned the batch bomb itself: {condemned:?}"
    );
    assert!(
        !condemned.iter().any(|c| c["cgroup"]
            .as_str()
            .is_some_and(|d| d.contains(web.as_str()))),
        "the fork probe left the web pod alone: {condemned:?}"
    );
    let web_actions = stopped
        .of_kind("action")
        .filter(|r| pod(r)["pod_uid"] == web.as_str())
        .count();
    assert_eq!(web_actions, 0, "no action on the web pod");
}
