//! What a verdict leads to, and the signal that carries it out: one home
//! for the choice, used by the CLI, the kernel's budgets, containment and
//! the records.

/// What a detector's verdict leads to (`--fork-action`).
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum ActionKind {
    /// Alert only.
    Log,
    /// Refuse every fork and clone of the offending lineage in the kernel
    /// (they fail with EAGAIN); nobody is signalled.
    Refuse,
    /// Refuse; if the lineage keeps trying past `--refuse-grace`, stop it.
    RefuseThenStop,
    /// Refuse; if the lineage keeps trying past `--refuse-grace`, kill it.
    RefuseThenKill,
    /// Freeze the offender (SIGSTOP): what each flag's detector blames.
    /// Its forks are refused first.
    Stop,
    /// Kill the offender (SIGKILL). Its forks are refused first.
    Kill,
}

impl ActionKind {
    pub fn name(self) -> &'static str {
        match self {
            ActionKind::Log => "log",
            ActionKind::Refuse => "refuse",
            ActionKind::RefuseThenStop => "refuse-then-stop",
            ActionKind::RefuseThenKill => "refuse-then-kill",
            ActionKind::Stop => "stop",
            ActionKind::Kill => "kill",
        }
    }

    /// The signal an action sends at once: SIGSTOP for `stop`, SIGKILL for
    /// `kill`, none for `log` and the refusals (see [`ActionKind::then`]).
    pub fn signal(self) -> Option<i32> {
        match self {
            ActionKind::Stop => Some(libc::SIGSTOP),
            ActionKind::Kill => Some(libc::SIGKILL),
            _ => None,
        }
    }

    /// Whether it starts by refusing the lineage's forks (and nothing
    /// else).
    pub fn refuses(self) -> bool {
        matches!(
            self,
            ActionKind::Refuse | ActionKind::RefuseThenStop | ActionKind::RefuseThenKill
        )
    }

    /// The next rung of a ladder: what a refused lineage that keeps trying
    /// gets once the grace is over.
    pub fn then(self) -> Option<ActionKind> {
        match self {
            ActionKind::RefuseThenStop => Some(ActionKind::Stop),
            ActionKind::RefuseThenKill => Some(ActionKind::Kill),
            _ => None,
        }
    }

    /// What it becomes where the kernel cannot refuse (no BPF LSM): a
    /// ladder starts at its next rung, a plain `refuse` only alerts.
    pub fn without_refusal(self) -> ActionKind {
        match self {
            ActionKind::Refuse => ActionKind::Log,
            other => other.then().unwrap_or(other),
        }
    }

    /// Whether it signals or refuses at all (anything but `log`).
    pub fn acts(self) -> bool {
        self != ActionKind::Log
    }
}

/// One `[[policy]]` table of the config file: the actions of the cgroups
/// whose directory (or an ancestor's) matches `cgroup`, a glob (`*`, `?`,
/// `[...]`) over full directory paths, e.g.
/// `/sys/fs/cgroup/system.slice/ci-runner*.service`; or, instead of
/// `cgroup`, of the Kubernetes pods whose namespace matches `namespace`, a
/// glob over namespace names (the pod is found from the cgroup, its
/// namespace from kubelet's log directory: see `host::kube`). Unset
/// actions are the flags' (or the file's top-level keys').
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CgroupPolicy {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cgroup: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fork_action: Option<ActionKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_action: Option<ActionKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leak_action: Option<ActionKind>,
    /// `log` or `stop` (of the restarting supervisor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crashloop_action: Option<ActionKind>,
}

impl CgroupPolicy {
    /// How messages and `guard config` name it: its cgroup glob, or
    /// `namespace=<glob>`.
    pub fn label(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("namespace={ns}"),
            None => self.cgroup.clone(),
        }
    }
}

/// What a policy matches.
#[derive(Clone, Debug)]
enum Matcher {
    /// A cgroup directory or an ancestor's path.
    Cgroup(glob::Pattern),
    /// The namespace of the pod a cgroup belongs to.
    Namespace(glob::Pattern),
}

/// The policies, first match wins, in file order.
#[derive(Clone, Debug, Default)]
pub struct Policies {
    rules: Vec<(Matcher, CgroupPolicy)>,
    /// Pods' namespaces, for `namespace` policies.
    pods: std::sync::Arc<crate::host::kube::PodNames>,
    /// The mounts of every hierarchy showing the whole tree (hybrid v1
    /// has several): a policy that names a cgroup in one matches the same
    /// path in the others (see [`Policies::across`]).
    mounts: Vec<std::path::PathBuf>,
}

impl Policies {
    pub fn new(rules: Vec<CgroupPolicy>) -> Result<Self, String> {
        let mut compiled = Vec::new();
        for rule in rules {
            let matcher = match (&rule.namespace, rule.cgroup.as_str()) {
                (Some(_), c) if !c.is_empty() => {
                    return Err(format!(
                        "policy {:?} names both a cgroup and a namespace {:?}: give one \
                         (a [[policy]] per cgroup or per namespace glob)",
                        rule.cgroup,
                        rule.namespace.as_deref().unwrap_or_default()
                    ));
                }
                (Some(ns), _) => {
                    if ns.is_empty() || ns.contains('/') || ns.contains('_') {
                        return Err(format!(
                            "policy namespace {ns:?}: give a namespace name or a glob over \
                             them, e.g. \"ci-*\""
                        ));
                    }
                    Matcher::Namespace(
                        glob::Pattern::new(ns)
                            .map_err(|e| format!("policy namespace {ns:?}: {e}"))?,
                    )
                }
                (None, "") => {
                    return Err(
                        "a [[policy]] needs cgroup = \"/sys/fs/cgroup/...\" (a glob over \
                         cgroup directories) or namespace = \"...\" (a glob over Kubernetes \
                         namespaces)"
                            .into(),
                    );
                }
                (None, cgroup) => {
                    let pattern = glob::Pattern::new(cgroup)
                        .map_err(|e| format!("policy cgroup {cgroup:?}: {e}"))?;
                    if !cgroup.starts_with('/') {
                        return Err(format!(
                            "policy cgroup {cgroup:?}: give a full directory path (a glob), \
                             e.g. /sys/fs/cgroup/ci*"
                        ));
                    }
                    Matcher::Cgroup(pattern)
                }
            };
            if rule
                .crashloop_action
                .is_some_and(|a| !matches!(a, ActionKind::Log | ActionKind::Stop))
            {
                return Err(format!(
                    "policy {:?}: crashloop-action is log or stop (guard stops a crash loop's \
                     supervisor, it never kills it nor refuses its restarts)",
                    rule.label()
                ));
            }
            if rule.mem_action.is_some_and(ActionKind::refuses) {
                return Err(format!(
                    "policy {:?}: mem-action is log, stop or kill (refusing forks frees no \
                     memory)",
                    rule.label()
                ));
            }
            compiled.push((matcher, rule));
        }
        Ok(Self {
            rules: compiled,
            pods: Default::default(),
            mounts: Vec::new(),
        })
    }

    /// Where `namespace` policies find pods' namespaces.
    pub fn with_pods(mut self, pods: std::sync::Arc<crate::host::kube::PodNames>) -> Self {
        self.pods = pods;
        self
    }

    /// Pods' names, shared by every copy of these policies.
    pub fn pods(&self) -> &std::sync::Arc<crate::host::kube::PodNames> {
        &self.pods
    }

    /// Whether any policy names a namespace.
    pub fn by_namespace(&self) -> bool {
        self.rules
            .iter()
            .any(|(m, _)| matches!(m, Matcher::Namespace(_)))
    }

    /// The namespace of the pod `dir` is in, if it is in a pod whose name
    /// is known.
    /// Whether `dir` is in a pod whose namespace a `namespace` policy needs
    /// and kubelet's log directory does not give yet.
    pub fn awaits_pod_name(&self, dir: &str) -> bool {
        self.by_namespace()
            && crate::host::kube::pod_of(dir).is_some()
            && self.namespace_of(dir).is_none()
    }

    fn namespace_of(&self, dir: &str) -> Option<String> {
        let pod = crate::host::kube::pod_of(dir)?;
        self.pods
            .lookup(&pod.uid, crate::host::clock::WallClock::boot_ns_now())
            .map(|n| n.namespace)
    }

    /// On a host with several hierarchies (hybrid v1: pids, memory, the v2
    /// mount), a process is in one cgroup per hierarchy, and systemd,
    /// kubelet and `cgcreate` give them the same path under each mount. A
    /// policy that names `/sys/fs/cgroup/pids/x` then holds for
    /// `/sys/fs/cgroup/memory/x` too: the memory rule, which judges memory
    /// cgroups, takes the policy written against the pids path.
    pub fn across(mut self, hierarchies: &crate::host::cgroup::Hierarchies) -> Self {
        self.mounts = hierarchies
            .list
            .iter()
            .filter(|h| h.mount_root == "/")
            .map(|h| h.mount.clone())
            .collect();
        self
    }

    /// `dir` and the same path under every other mount.
    fn twins(&self, dir: &str) -> Vec<String> {
        let path = std::path::Path::new(dir);
        let mut out = vec![dir.to_owned()];
        let Some(rel) = self
            .mounts
            .iter()
            .filter_map(|m| path.strip_prefix(m).ok().map(|r| (m, r)))
            .max_by_key(|(m, _)| m.as_os_str().len())
        else {
            return out;
        };
        for mount in self.mounts.iter().filter(|m| *m != rel.0) {
            if let Some(twin) = mount.join(rel.1).to_str() {
                out.push(twin.trim_end_matches('/').to_owned());
            }
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn rules(&self) -> impl Iterator<Item = &CgroupPolicy> {
        self.rules.iter().map(|(_, r)| r)
    }

    /// For each policy, in order, the directories of `dirs` its glob
    /// matches itself, or through their twins in the other hierarchies
    /// (their descendants follow from them).
    /// A namespace policy lists the pods' own directories.
    pub fn matching<'a>(&self, dirs: &'a [String]) -> Vec<(&CgroupPolicy, Vec<&'a str>)> {
        self.rules
            .iter()
            .map(|(matcher, rule)| {
                let mut hits: Vec<&str> = dirs
                    .iter()
                    .map(String::as_str)
                    .filter(|d| match matcher {
                        Matcher::Cgroup(pattern) => {
                            self.twins(d).iter().any(|t| pattern.matches(t))
                        }
                        Matcher::Namespace(pattern) => {
                            let parent = std::path::Path::new(d).parent().and_then(|p| p.to_str());
                            parent.and_then(crate::host::kube::pod_of).is_none()
                                && self.namespace_of(d).is_some_and(|ns| pattern.matches(&ns))
                        }
                    })
                    .collect();
                hits.sort_unstable();
                (rule, hits)
            })
            .collect()
    }

    /// The first policy whose glob matches `dir` or one of its ancestors
    /// (or their twins in the other hierarchies: see [`Policies::across`]).
    pub fn for_cgroup(&self, dir: &str) -> Option<&CgroupPolicy> {
        self.for_cgroups(&[dir])
    }

    /// The first policy, in file order, whose glob matches any of `dirs`
    /// (a process's cgroups, one per hierarchy), their ancestors or twins,
    /// or the namespace of a pod one of them is in.
    pub fn for_cgroups(&self, dirs: &[&str]) -> Option<&CgroupPolicy> {
        let namespaces: Vec<String> = if self.by_namespace() {
            dirs.iter().filter_map(|d| self.namespace_of(d)).collect()
        } else {
            Vec::new()
        };
        let twins: Vec<String> = dirs.iter().flat_map(|d| self.twins(d)).collect();
        let candidates: Vec<&str> = twins
            .iter()
            .flat_map(|twin| {
                std::iter::successors(Some(std::path::Path::new(twin.as_str())), |p| p.parent())
            })
            .filter_map(|p| p.to_str())
            .filter(|p| *p != "/")
            .collect();
        self.rules
            .iter()
            .find(|(matcher, _)| match matcher {
                Matcher::Cgroup(pattern) => candidates.iter().any(|c| pattern.matches(c)),
                Matcher::Namespace(pattern) => namespaces.iter().any(|ns| pattern.matches(ns)),
            })
            .map(|(_, rule)| rule)
    }

    /// The action a policy sets for `detector` in `dir`, if one does.
    pub fn action(
        &self,
        detector: crate::detect::switches::Detector,
        dir: Option<&str>,
    ) -> Option<ActionKind> {
        self.action_in(detector, &[dir?])
    }

    /// The action the first policy matching any of `dirs` sets for
    /// `detector`, if one does.
    pub fn action_in(
        &self,
        detector: crate::detect::switches::Detector,
        dirs: &[&str],
    ) -> Option<ActionKind> {
        use crate::detect::switches::Detector;
        let rule = self.for_cgroups(dirs)?;
        match detector {
            Detector::Fork => rule.fork_action,
            Detector::Memory => rule.mem_action,
            Detector::Leak => rule.leak_action,
            Detector::Crashloop => rule.crashloop_action,
            Detector::Blocked => None,
        }
    }

    /// The strongest of `flag` (the `--fork-action`) and every policy's
    /// fork action: what the fork probe's budgets signal with.
    pub fn strongest_fork_action(&self, flag: ActionKind) -> ActionKind {
        self.rules()
            .filter_map(|r| r.fork_action)
            .chain([flag])
            .max_by_key(|a| a.strength())
            .unwrap_or(flag)
    }
}

impl ActionKind {
    /// By what it does at once: log < the refusals < stop < kill.
    pub fn strength(self) -> u8 {
        match self {
            ActionKind::Log => 0,
            ActionKind::Refuse => 1,
            ActionKind::RefuseThenStop => 2,
            ActionKind::RefuseThenKill => 3,
            ActionKind::Stop => 4,
            ActionKind::Kill => 5,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::switches::Detector;

    fn policy(cgroup: &str, fork: Option<ActionKind>) -> CgroupPolicy {
        CgroupPolicy {
            cgroup: cgroup.into(),
            fork_action: fork,
            ..Default::default()
        }
    }

    #[test]
    fn on_hybrid_v1_a_policy_holds_for_the_same_path_in_every_hierarchy() {
        let hierarchies = crate::host::cgroup::Hierarchies::parse(
            "31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n\
             33 30 0:29 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n\
             34 30 0:30 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n",
            "9:memory:/\n8:pids:/\n0::/\n",
        )
        .expect("hybrid");
        let mut kill_memory = policy("/sys/fs/cgroup/pids/ci-*", None);
        kill_memory.mem_action = Some(ActionKind::Kill);
        let rules = vec![kill_memory];
        let p = Policies::new(rules.clone())
            .expect("valid")
            .across(&hierarchies);
        let memory = Some("/sys/fs/cgroup/memory/ci-7/job");
        assert_eq!(p.action(Detector::Memory, memory), Some(ActionKind::Kill));
        assert_eq!(
            p.action(Detector::Memory, Some("/sys/fs/cgroup/memory/web")),
            None
        );
        // A process's cgroups at different paths: any of them matches.
        assert_eq!(
            p.action_in(
                Detector::Memory,
                &["/sys/fs/cgroup/memory/user/x", "/sys/fs/cgroup/pids/ci-3"]
            ),
            Some(ActionKind::Kill)
        );
        // Without the hierarchies (one tree), only the path itself.
        let alone = Policies::new(rules).expect("valid");
        assert_eq!(alone.action(Detector::Memory, memory), None);
        assert_eq!(
            alone.action(Detector::Memory, Some("/sys/fs/cgroup/pids/ci-7")),
            Some(ActionKind::Kill)
        );
    }

    #[test]
    fn the_first_matching_policy_covers_the_cgroup_and_everything_below() {
        let p = Policies::new(vec![
            policy(
                "/sys/fs/cgroup/*/ci-runner*.service",
                Some(ActionKind::Kill),
            ),
            policy("/sys/fs/cgroup/system.slice", Some(ActionKind::Log)),
        ])
        .expect("valid");
        let ci = "/sys/fs/cgroup/system.slice/ci-runner@3.service/job-17";
        assert_eq!(p.action(Detector::Fork, Some(ci)), Some(ActionKind::Kill));
        assert_eq!(
            p.action(
                Detector::Fork,
                Some("/sys/fs/cgroup/system.slice/postgresql.service")
            ),
            Some(ActionKind::Log)
        );
        assert_eq!(
            p.action(Detector::Fork, Some("/sys/fs/cgroup/user.slice")),
            None
        );
        assert_eq!(p.action(Detector::Memory, Some(ci)), None, "memory not set");
        assert_eq!(p.action(Detector::Fork, None), None);
        assert_eq!(p.strongest_fork_action(ActionKind::Log), ActionKind::Kill);
    }

    #[test]
    fn a_namespace_policy_matches_the_pods_of_its_namespaces() {
        use crate::host::kube::{PodName, PodNames};
        const UID: &str = "8f3c5d1e-2b4a-4c6d-9e8f-0a1b2c3d4e5f";
        let pods = PodNames::known([(
            UID.to_owned(),
            PodName {
                namespace: "ci-17".into(),
                name: "runner".into(),
            },
        )]);
        let p = Policies::new(vec![
            CgroupPolicy {
                namespace: Some("ci-*".into()),
                fork_action: Some(ActionKind::Kill),
                ..Default::default()
            },
            policy("/sys/fs/cgroup", Some(ActionKind::Log)),
        ])
        .expect("valid")
        .with_pods(std::sync::Arc::new(pods));
        let pod = format!(
            "/sys/fs/cgroup/kubepods.slice/kubepods-pod{}.slice",
            UID.replace('-', "_")
        );
        let container = format!("{pod}/cri-containerd-{}.scope", "a".repeat(64));
        assert_eq!(
            p.action(Detector::Fork, Some(&container)),
            Some(ActionKind::Kill)
        );
        let other =
            "/sys/fs/cgroup/kubepods.slice/kubepods-pod1f3c5d1e_2b4a_4c6d_9e8f_0a1b2c3d4e5f.slice";
        assert_eq!(
            p.action(Detector::Fork, Some(other)),
            Some(ActionKind::Log),
            "unknown pod"
        );
        let dirs = vec![
            "/sys/fs/cgroup/kubepods.slice".to_owned(),
            pod.clone(),
            container,
        ];
        let matching = p.matching(&dirs);
        assert_eq!(matching[0].1, [pod.as_str()], "the pod's own directory");
        assert_eq!(matching[0].0.label(), "namespace=ci-*");
    }

    #[test]
    fn bad_policies_are_refused_with_the_reason() {
        let both = CgroupPolicy {
            cgroup: "/a".into(),
            namespace: Some("ci".into()),
            ..Default::default()
        };
        assert!(
            Policies::new(vec![both])
                .expect_err("refused")
                .contains("give one")
        );
        assert!(
            Policies::new(vec![CgroupPolicy::default()])
                .expect_err("refused")
                .contains("needs cgroup")
        );
        let path = CgroupPolicy {
            namespace: Some("/sys/fs/cgroup/x".into()),
            ..Default::default()
        };
        assert!(
            Policies::new(vec![path])
                .expect_err("refused")
                .contains("namespace name")
        );
        assert!(
            Policies::new(vec![policy("ci*", None)])
                .expect_err("refused")
                .contains("full directory path")
        );
        assert!(Policies::new(vec![policy("/a/[b", None)]).is_err());
        let mut kill = policy("/a", None);
        kill.crashloop_action = Some(ActionKind::Kill);
        assert!(
            Policies::new(vec![kill])
                .expect_err("refused")
                .contains("log or stop")
        );
        let mut refuse = policy("/a", None);
        refuse.mem_action = Some(ActionKind::Refuse);
        assert!(
            Policies::new(vec![refuse])
                .expect_err("refused")
                .contains("frees no memory")
        );
    }

    #[test]
    fn a_ladder_refuses_first_and_falls_back_to_its_next_rung() {
        let ladder = ActionKind::RefuseThenKill;
        assert!(ladder.refuses() && ladder.signal().is_none());
        assert_eq!(ladder.then(), Some(ActionKind::Kill));
        assert_eq!(ladder.without_refusal(), ActionKind::Kill);
        assert_eq!(ActionKind::Refuse.without_refusal(), ActionKind::Log);
        assert_eq!(ActionKind::Stop.without_refusal(), ActionKind::Stop);
        assert_eq!(ActionKind::Kill.signal(), Some(libc::SIGKILL));
        let p = Policies::new(vec![policy("/a", Some(ActionKind::Refuse))]).expect("valid");
        assert_eq!(p.strongest_fork_action(ActionKind::Log), ActionKind::Refuse);
        assert_eq!(p.strongest_fork_action(ActionKind::Stop), ActionKind::Stop);
        let names: Vec<String> = [ActionKind::RefuseThenStop, ActionKind::Refuse]
            .iter()
            .map(|a| serde_json::to_string(a).expect("serializes"))
            .collect();
        assert_eq!(names, ["\"refuse-then-stop\"", "\"refuse\""]);
    }
}
