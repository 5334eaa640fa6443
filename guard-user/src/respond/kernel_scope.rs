//! What the fork probe enforces by itself: the scope it tags subtrees in,
//! what it must never tag or signal, and the explosion rule it applies.
//!
//! Why the kernel does this and not only the agent: a bash fork bomb forks
//! about 140 times in its first 20 ms, and under it the agent's thread was
//! measured going 100–300 ms without the CPU. When the agent only started
//! watching a subtree once its cgroup looked suspicious, the bomb could reach
//! pids.max before the watch was in place. With the kernel scope, the fork
//! probe tags a subtree at its first fork in scope (the forker is the root,
//! unless it is protected: then the child is) and counts every birth against
//! the rule from then on, so condemnation never waits for the agent.
//!
//! The probe reads a task's cgroup in one hierarchy: the scope's. It is on
//! only when that is well defined (see [`plan`]); otherwise guard says why
//! and keeps to its agent-side watch.

use std::os::unix::fs::MetadataExt as _;

use anyhow::{Context as _, Result};
use guard_common::{ABSENT, ExeId, SCOPE_IN, SCOPE_PROTECTED};

use crate::{
    host::cgroup::Hierarchies, host::scope::Scope, respond::policy::ActionKind,
    respond::protect::Protected,
};

/// The explosion rule as the fork probe applies it to a watched subtree.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BudgetLimits {
    pub window_ns: u64,
    pub max_births: u32,
    pub min_growth: u32,
    pub min_depth: u32,
    /// SIGKILL or SIGSTOP; 0 for a refusal (the probe refuses the
    /// subtree's forks and signals nobody).
    pub signal: i32,
}

impl BudgetLimits {
    /// The fork detector's explosion rule, enforced with `action`'s signal.
    pub fn new(rules: &crate::detect::fork::ForkRules, action: ActionKind) -> Self {
        Self {
            window_ns: rules.window_ns,
            max_births: u32::try_from(rules.min_births()).unwrap_or(u32::MAX),
            min_growth: rules.growth,
            min_depth: rules.depth,
            signal: action.signal().unwrap_or(0),
        }
    }
}

/// The hierarchy the fork probe reads a task's cgroup in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScopeHierarchy {
    /// cgroup v2 (`css_set.dfl_cgrp`).
    V2,
    /// A v1 hierarchy, through this controller's `css_set.subsys[]` slot.
    V1Controller(String),
}

/// Everything the loader hands the fork probe about scope and protection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelScope {
    /// `Some` when the probe tags subtrees by itself.
    pub rule: Option<BudgetLimits>,
    /// Why it does not, when it does not (for the log).
    pub off_because: Option<String>,
    /// The hierarchy the probes read the scope in; `None` when they cannot
    /// (see `off_because`): then they neither tag nor filter.
    pub hierarchy: Option<ScopeHierarchy>,
    /// The probes drop the events of tasks outside the scope: `--cgroup`
    /// was given and the probes can read the scope.
    pub filter: bool,
    /// No `--cgroup`: every cgroup is in scope.
    pub all_cgroups: bool,
    /// (cgroup directory, SCOPE_IN or SCOPE_PROTECTED).
    pub cgroups: Vec<(String, u32)>,
    /// Never tagged or signalled by the probe (whether or not it tags by
    /// itself): guard, its ancestors and `--protect`ed pids; and the
    /// trusted executables (service managers and `--protect`ed programs),
    /// by inode.
    pub protected_pids: Vec<u32>,
    pub protected_exes: Vec<ExeId>,
}

/// What the plan is made from.
pub struct Inputs<'a> {
    pub action: ActionKind,
    pub dry_run: bool,
    pub rule: BudgetLimits,
    pub scope: &'a Scope,
    pub protect: &'a [Protected],
    pub guard_chain: &'a [u32],
    /// The trusted executables (see `identity`).
    pub trusted: &'a [ExeId],
    pub hierarchies: &'a Hierarchies,
}

/// Decides what the probes do with the scope. They can read it when every
/// scope and `--protect` cgroup is in one hierarchy they can read: v2, or a
/// v1 hierarchy with a controller (a named v1 hierarchy has no `css_set`
/// slot). Then, with `--cgroup`, they drop the events of tasks outside it;
/// and when the fork guard acts (`stop` or `kill`, not a dry run), the fork
/// probe tags subtrees by itself.
pub fn plan(inputs: &Inputs<'_>) -> KernelScope {
    let protected_pids = inputs
        .guard_chain
        .iter()
        .copied()
        .chain(inputs.protect.iter().filter_map(|p| match p {
            Protected::Pid(pid) => Some(*pid),
            _ => None,
        }))
        .collect();
    let mut plan = KernelScope {
        protected_pids,
        protected_exes: inputs.trusted.to_vec(),
        all_cgroups: inputs.scope.cgroups.is_empty(),
        ..KernelScope::default()
    };
    match decide(inputs) {
        Ok((hierarchy, cgroups)) => {
            plan.hierarchy = Some(hierarchy);
            plan.cgroups = cgroups;
            plan.filter = !plan.all_cgroups;
            if inputs.action == ActionKind::Log {
                plan.off_because = Some("--fork-action is log".into());
            } else if inputs.dry_run {
                plan.off_because = Some("--dry-run".into());
            } else {
                plan.rule = Some(inputs.rule);
            }
        }
        Err(why) => plan.off_because = Some(why),
    }
    plan
}

type Decision = (ScopeHierarchy, Vec<(String, u32)>);

fn decide(inputs: &Inputs<'_>) -> Result<Decision, String> {
    let h = inputs.hierarchies;
    let mut cgroups: Vec<(usize, String, u32)> = inputs
        .scope
        .cgroups
        .iter()
        .map(|(index, dir)| (*index, dir.clone(), SCOPE_IN))
        .collect();
    for p in inputs.protect {
        if let Protected::Cgroup(dir) = p {
            let (index, dir) = h
                .resolve_dir(&crate::host::cgroup::fs_path(dir))
                .map_err(|e| format!("--protect {dir}: {e:#}"))?;
            cgroups.push((index, dir, SCOPE_PROTECTED));
        }
    }
    let index = match cgroups.first() {
        Some((index, _, _)) => *index,
        // Everything in scope and no protected cgroup: any hierarchy will
        // do; the pids one, where the limits are, or v2.
        None => h.pids_index(),
    };
    if let Some((_, dir, _)) = cgroups.iter().find(|(i, _, _)| *i != index) {
        return Err(format!(
            "{dir} is in another cgroup hierarchy than {}: the fork probe reads one",
            h.list[index].mount.display()
        ));
    }
    let hierarchy = &h.list[index];
    let which = if hierarchy.is_v2() {
        ScopeHierarchy::V2
    } else {
        let controller = hierarchy
            .controllers
            .split(',')
            .find(|c| !c.is_empty() && !c.starts_with("name="))
            .ok_or_else(|| {
                format!(
                    "{} is a named v1 hierarchy ({}): the fork probe cannot read it",
                    hierarchy.mount.display(),
                    hierarchy.controllers
                )
            })?;
        ScopeHierarchy::V1Controller(controller.to_owned())
    };
    Ok((
        which,
        cgroups
            .into_iter()
            .map(|(_, dir, verdict)| (dir, verdict))
            .collect(),
    ))
}

impl KernelScope {
    /// The `css_set.subsys[]` index of the scope's controller, or
    /// [`ABSENT`] for v2.
    pub fn subsys_index(&self, btf: &crate::kernel::btf::Btf) -> Result<u32> {
        match &self.hierarchy {
            Some(ScopeHierarchy::V1Controller(name)) => {
                let variant = format!("{name}_cgrp_id");
                let value = btf
                    .enum_value("cgroup_subsys_id", &variant)?
                    .with_context(|| format!("this kernel's BTF has no {variant}"))?;
                u32::try_from(value).with_context(|| format!("{variant} = {value}"))
            }
            _ => Ok(ABSENT),
        }
    }

    /// (kernfs id, verdict) of each listed cgroup: a cgroup directory's
    /// inode number is its kernfs node id on 64-bit kernels.
    pub fn cgroup_ids(&self) -> Result<Vec<(u64, u32)>> {
        self.cgroups
            .iter()
            .map(|(dir, verdict)| {
                let meta = std::fs::metadata(crate::host::cgroup::fs_path(dir))
                    .with_context(|| format!("reading {dir}"))?;
                Ok((meta.ino(), *verdict))
            })
            .collect()
    }
}

/// A scope or protected cgroup directory, and the kernfs id the fork probe
/// knows it by.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Watched {
    dir: String,
    verdict: u32,
    /// `None` while the directory does not exist.
    id: Option<u64>,
}

/// What changed about a listed cgroup directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScopeChange {
    /// Removed: the probe's entry names a cgroup that is gone.
    Removed { dir: String },
    /// Created again at the same path, with a new id.
    Recreated {
        dir: String,
        old: Option<u64>,
        new: u64,
        verdict: u32,
    },
}

/// The cgroups the fork probe's `SCOPE` map lists, by path. A service
/// restart removes its cgroup and creates it again at the same path with a
/// new id, which the probe (matching ids) would no longer take for the
/// scope: the agent looks again on its sample tick and whenever a process
/// moves between cgroups, and the probe's map follows.
#[derive(Clone, Debug, Default)]
pub struct ScopeWatch {
    watched: Vec<Watched>,
}

impl ScopeWatch {
    /// The listed directories of `plan` with the ids loaded into `SCOPE`.
    pub fn new(plan: &KernelScope, loaded: &[(u64, u32)]) -> Self {
        let watched = plan
            .cgroups
            .iter()
            .zip(loaded)
            .map(|((dir, verdict), &(id, _))| Watched {
                dir: dir.clone(),
                verdict: *verdict,
                id: Some(id),
            })
            .collect();
        Self { watched }
    }

    pub fn is_empty(&self) -> bool {
        self.watched.is_empty()
    }

    /// Looks at each directory's id now (`id_of`: the inode number, `None`
    /// when it does not exist) and returns what changed.
    pub fn check(&mut self, id_of: impl Fn(&str) -> Option<u64>) -> Vec<ScopeChange> {
        let mut changes = Vec::new();
        for w in &mut self.watched {
            let now = id_of(&w.dir);
            if now == w.id {
                continue;
            }
            match now {
                None => changes.push(ScopeChange::Removed { dir: w.dir.clone() }),
                Some(new) => changes.push(ScopeChange::Recreated {
                    dir: w.dir.clone(),
                    old: w.id,
                    new,
                    verdict: w.verdict,
                }),
            }
            w.id = now;
        }
        changes
    }
}

/// Cgroup directories at or below `roots` (at most 16 levels, 10000
/// directories) whose path `ignored` matches.
pub fn matching_cgroups(
    roots: &[std::path::PathBuf],
    ignored: impl Fn(&str) -> bool,
) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack: Vec<(std::path::PathBuf, u32)> = roots.iter().map(|r| (r.clone(), 0)).collect();
    let mut seen = 0;
    while let Some((dir, depth)) = stack.pop() {
        seen += 1;
        if seen > 10_000 {
            tracing::warn!("more than 10000 cgroups below the scope: --ignore looked at the first");
            break;
        }
        let text = dir.to_string_lossy();
        if ignored(&text) {
            found.push(text.into_owned());
        }
        if depth >= 16 {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push((entry.path(), depth + 1));
            }
        }
    }
    found
}

/// The inode number of `dir` (its kernfs id), `None` when it is gone.
pub fn cgroup_dir_id(dir: &str) -> Option<u64> {
    std::fs::metadata(crate::host::cgroup::fs_path(dir))
        .ok()
        .map(|m| m.ino())
}

/// The fork probe's `SCOPE` map and its per-cgroup verdict cache.
pub struct ScopeMaps {
    scope: aya::maps::HashMap<aya::maps::MapData, u64, u32>,
    cache: aya::maps::HashMap<aya::maps::MapData, u64, u32>,
}

impl ScopeMaps {
    pub fn new(scope: aya::maps::Map, cache: aya::maps::Map) -> Result<Self> {
        Ok(Self {
            scope: aya::maps::HashMap::try_from(scope).context("SCOPE map")?,
            cache: aya::maps::HashMap::try_from(cache).context("SCOPE_CACHE map")?,
        })
    }

    /// Lists `dir` with `verdict`: `SCOPE_PROTECTED`, the probe neither
    /// tags nor signals what runs in it or below it (an `--ignore
    /// fork:cgroup=` match, a `log` policy); a softened `SCOPE_IN_*`, it
    /// acts there as a policy asks (see `guard_common::scope_signal`).
    pub fn set(&mut self, dir: &str, verdict: u32) -> Result<()> {
        let id = cgroup_dir_id(dir).with_context(|| format!("{dir} is gone"))?;
        self.scope
            .insert(id, verdict, 0)
            .context("updating the fork probe's SCOPE map")?;
        self.forget_verdicts();
        Ok(())
    }

    /// Drops every cached verdict: cgroups were judged without a change.
    fn forget_verdicts(&mut self) {
        let cached: Vec<u64> = self.cache.keys().filter_map(Result::ok).collect();
        for id in cached {
            let _ = self.cache.remove(&id);
        }
    }

    /// Makes the probe see `change`: a recreated directory's new id is
    /// listed (the old one dropped), and every cached verdict is forgotten,
    /// since cgroups created meanwhile were judged without it.
    pub fn apply(&mut self, change: &ScopeChange) -> Result<()> {
        if let ScopeChange::Recreated {
            old, new, verdict, ..
        } = change
        {
            if let Some(old) = old {
                let _ = self.scope.remove(old);
            }
            self.scope
                .insert(new, verdict, 0)
                .context("updating the fork probe's SCOPE map")?;
            self.forget_verdicts();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = "\
30 25 0:26 / /sys/fs/cgroup/pids rw,nosuid - cgroup cgroup rw,pids
31 25 0:27 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
32 25 0:28 / /sys/fs/cgroup/systemd rw,nosuid - cgroup cgroup rw,name=systemd
33 25 0:29 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
";
    const V1_SELF: &str = "5:pids:/\n4:memory:/\n1:name=systemd:/\n0::/\n";
    const V2: &str = "30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n";

    fn rule() -> BudgetLimits {
        BudgetLimits {
            window_ns: 1_000_000_000,
            max_births: 100,
            min_growth: 32,
            min_depth: 4,
            signal: libc::SIGKILL,
        }
    }

    fn inputs<'a>(
        h: &'a Hierarchies,
        scope: &'a Scope,
        protect: &'a [Protected],
        action: ActionKind,
    ) -> Inputs<'a> {
        Inputs {
            action,
            dry_run: false,
            rule: rule(),
            scope,
            protect,
            guard_chain: &[4242, 4000],
            trusted: &[TRUSTED],
            hierarchies: h,
        }
    }

    const TRUSTED: ExeId = ExeId {
        ino: 7,
        dev: 1,
        reserved: 0,
    };

    #[test]
    fn a_v1_pids_scope_reads_the_pids_slot() {
        let h = Hierarchies::parse(V1, V1_SELF).expect("parse");
        let pids = h.index_of_controller("pids").expect("pids");
        let scope = Scope {
            cgroups: vec![(pids, "/sys/fs/cgroup/pids/jobs".into())],
        };
        let protect = [Protected::Pid(600), Protected::Program("postgres".into())];
        let plan = plan(&inputs(&h, &scope, &protect, ActionKind::Kill));
        assert_eq!(plan.off_because, None);
        assert_eq!(plan.rule, Some(rule()));
        assert_eq!(
            plan.hierarchy,
            Some(ScopeHierarchy::V1Controller("pids".into()))
        );
        assert!(!plan.all_cgroups);
        assert_eq!(
            plan.cgroups,
            vec![("/sys/fs/cgroup/pids/jobs".to_owned(), SCOPE_IN)]
        );
        assert_eq!(plan.protected_pids, vec![4242, 4000, 600]);
        // Executables by inode, as verified: never names.
        assert_eq!(plan.protected_exes, vec![TRUSTED]);
    }

    #[test]
    fn a_scope_removed_and_created_again_is_followed() {
        let plan = KernelScope {
            cgroups: vec![
                ("/cg/svc".into(), SCOPE_IN),
                ("/cg/svc/db".into(), SCOPE_PROTECTED),
            ],
            ..KernelScope::default()
        };
        let mut watch = ScopeWatch::new(&plan, &[(10, SCOPE_IN), (11, SCOPE_PROTECTED)]);
        let ids = |svc: Option<u64>, db: Option<u64>| {
            move |dir: &str| if dir == "/cg/svc" { svc } else { db }
        };
        assert_eq!(watch.check(ids(Some(10), Some(11))), vec![]);
        assert_eq!(
            watch.check(ids(None, None)),
            vec![
                ScopeChange::Removed {
                    dir: "/cg/svc".into()
                },
                ScopeChange::Removed {
                    dir: "/cg/svc/db".into()
                }
            ]
        );
        assert_eq!(watch.check(ids(None, None)), vec![], "said once");
        assert_eq!(
            watch.check(ids(Some(20), None)),
            vec![ScopeChange::Recreated {
                dir: "/cg/svc".into(),
                old: None,
                new: 20,
                verdict: SCOPE_IN
            }]
        );
        // Recreated between two looks: the old id goes, the new one comes.
        assert_eq!(
            watch.check(ids(Some(30), Some(31))),
            vec![
                ScopeChange::Recreated {
                    dir: "/cg/svc".into(),
                    old: Some(20),
                    new: 30,
                    verdict: SCOPE_IN
                },
                ScopeChange::Recreated {
                    dir: "/cg/svc/db".into(),
                    old: None,
                    new: 31,
                    verdict: SCOPE_PROTECTED
                }
            ]
        );
    }

    #[test]
    fn pure_v2_without_scope_takes_every_cgroup() {
        let h = Hierarchies::parse(V2, "0::/\n").expect("parse");
        let scope = Scope::default();
        let plan = plan(&inputs(&h, &scope, &[], ActionKind::Stop));
        assert_eq!(plan.hierarchy, Some(ScopeHierarchy::V2));
        assert!(plan.all_cgroups);
        assert!(plan.cgroups.is_empty());
        assert!(plan.rule.is_some());
    }

    #[test]
    fn off_when_logging_dry_running_or_split_across_hierarchies() {
        let h = Hierarchies::parse(V1, V1_SELF).expect("parse");
        let pids = h.index_of_controller("pids").expect("pids");
        let memory = h.index_of_controller("memory").expect("memory");
        let scope = Scope {
            cgroups: vec![(pids, "/sys/fs/cgroup/pids/jobs".into())],
        };
        let log = plan(&inputs(&h, &scope, &[], ActionKind::Log));
        assert_eq!(log.rule, None);
        assert_eq!(log.off_because.as_deref(), Some("--fork-action is log"));
        // Protection still reaches the probe: it guards the agent's tags.
        assert_eq!(log.protected_pids, vec![4242, 4000]);

        let mut dry = inputs(&h, &scope, &[], ActionKind::Kill);
        dry.dry_run = true;
        assert_eq!(plan(&dry).off_because.as_deref(), Some("--dry-run"));

        let split = Scope {
            cgroups: vec![
                (pids, "/sys/fs/cgroup/pids/jobs".into()),
                (memory, "/sys/fs/cgroup/memory/jobs".into()),
            ],
        };
        let off = plan(&inputs(&h, &split, &[], ActionKind::Kill));
        assert_eq!(off.rule, None);
        assert!(
            off.off_because
                .as_deref()
                .is_some_and(|w| w.contains("another cgroup hierarchy")),
            "{off:?}"
        );

        let systemd = h.index_of_id(1).expect("name=systemd");
        let named = Scope {
            cgroups: vec![(systemd, "/sys/fs/cgroup/systemd/jobs".into())],
        };
        let off = plan(&inputs(&h, &named, &[], ActionKind::Kill));
        assert!(
            off.off_because
                .as_deref()
                .is_some_and(|w| w.contains("named v1 hierarchy")),
            "{off:?}"
        );
    }
}
