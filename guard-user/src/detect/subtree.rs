//! Which subtree a memory pool's growth comes from. Pure: the lineage, each
//! member's bytes now and at a baseline, and what is protected in; the
//! offender out.
//!
//! The incidents were collective: a server whose hundreds of helpers each
//! held tens of MB, a test runner whose workers all grew together. No
//! single process stood out, and killing the biggest one at a time did not
//! stop the pool running out. So growth is summed up the fork-time lineage
//! (ghosts included, as the fork guard keeps it), and the offender is:
//!
//! 1. among the topmost unprotected ancestors of the processes that grew,
//!    the one whose subtree grew most (a service manager, PID 1 or anything
//!    outside the scope is never one: the walk up stops below them);
//! 2. then, going down from it, the one child whose subtree holds at least
//!    [`DOMINANT`] of the growth, as long as there is one: a shell running
//!    one hog gives the hog (a single-process runaway is still killed
//!    alone), a runner whose workers grow together stays the runner.
//!
//! A process born after the baseline counts from its first byte.

use std::collections::HashMap;

use crate::host::proctable::{Lineage, LineageNode, NodeId};

/// Share of a subtree's growth one child's subtree must hold for the
/// offender to be that child rather than the subtree's root.
pub const DOMINANT: f64 = 0.9;

/// A process of the pool: its bytes that reclaim cannot take back (anon +
/// shmem) now, and at the baseline (`None`: born since).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    pub node: NodeId,
    pub now: u64,
    pub before: Option<u64>,
}

/// The subtree to act on.
#[derive(Clone, Debug, PartialEq)]
pub struct SubtreeOffender {
    pub node: NodeId,
    pub tgid: u32,
    /// Growth of the subtree's members since the baseline.
    pub growth: u64,
    /// Their bytes now.
    pub resident: u64,
    /// Members of the pool in the subtree.
    pub members: usize,
    /// The subtree's share of the pool's growth (0 to 1).
    pub share: f64,
}

#[derive(Default, Clone, Copy)]
struct Sums {
    growth: u64,
    resident: u64,
    members: usize,
}

/// The subtree whose growth explains the pool's (see the module).
pub fn offender(
    lineage: &Lineage,
    members: &[Member],
    protected: impl Fn(&LineageNode) -> Option<&'static str>,
) -> Option<SubtreeOffender> {
    let mut sums: HashMap<NodeId, Sums> = HashMap::new();
    // parent → children, among the nodes the walks pass.
    let mut children: HashMap<NodeId, Vec<NodeId>> = HashMap::new();
    let mut tops: Vec<NodeId> = Vec::new();
    let mut total = 0u64;
    for m in members {
        let Some(node) = lineage.get(m.node) else {
            continue;
        };
        if protected(node).is_some() {
            continue;
        }
        let growth = m.now.saturating_sub(m.before.unwrap_or(0));
        total += growth;
        let mut path = vec![m.node];
        for (id, ancestor) in lineage.ancestors(m.node) {
            if protected(ancestor).is_some() {
                break;
            }
            path.push(id);
        }
        for pair in path.windows(2) {
            let list = children.entry(pair[1]).or_default();
            if !list.contains(&pair[0]) {
                list.push(pair[0]);
            }
        }
        for &id in &path {
            let s = sums.entry(id).or_default();
            s.growth += growth;
            s.resident += m.now;
            s.members += 1;
        }
        if let Some(&top) = path.last()
            && !tops.contains(&top)
        {
            tops.push(top);
        }
    }
    let grown = |id: &NodeId| sums.get(id).map_or(0, |s| s.growth);
    let mut at = tops
        .iter()
        .copied()
        .max_by_key(|id| (grown(id), std::cmp::Reverse(*id)))?;
    if grown(&at) == 0 {
        return None;
    }
    loop {
        let here = grown(&at) as f64;
        let dominant = children
            .get(&at)
            .into_iter()
            .flatten()
            .copied()
            .find(|c| grown(c) as f64 >= DOMINANT * here);
        match dominant {
            Some(child) => at = child,
            None => break,
        }
    }
    let s = sums.get(&at).copied().unwrap_or_default();
    Some(SubtreeOffender {
        node: at,
        tgid: lineage.get(at)?.tgid,
        growth: s.growth,
        resident: s.resident,
        members: s.members,
        share: if total == 0 {
            0.0
        } else {
            s.growth as f64 / total as f64
        },
    })
}

/// `--prefer`: among the members that grew, the one `preferred` picks
/// and that grew most is the offender, with its own subtree (as earlyoom's
/// `--prefer`: the operator knows which programs to sacrifice first).
/// `None` when no preferred member grew: the subtree rule decides.
pub fn preferred(
    lineage: &Lineage,
    members: &[Member],
    protected: impl Fn(&LineageNode) -> Option<&'static str>,
    preferred: impl Fn(&LineageNode) -> bool,
) -> Option<SubtreeOffender> {
    let growth = |m: &Member| m.now.saturating_sub(m.before.unwrap_or(0));
    let total: u64 = members.iter().map(growth).sum();
    let chosen = members
        .iter()
        .filter(|m| growth(m) > 0)
        .filter(|m| {
            lineage
                .get(m.node)
                .is_some_and(|n| protected(n).is_none() && preferred(n))
        })
        .max_by_key(|m| (growth(m), std::cmp::Reverse(m.node)))?;
    // Its subtree: the members it is an ancestor of, and itself.
    let inside: Vec<&Member> = members
        .iter()
        .filter(|m| {
            m.node == chosen.node || lineage.ancestors(m.node).any(|(id, _)| id == chosen.node)
        })
        .collect();
    let grown: u64 = inside.iter().map(|m| growth(m)).sum();
    Some(SubtreeOffender {
        node: chosen.node,
        tgid: lineage.get(chosen.node)?.tgid,
        growth: grown,
        resident: inside.iter().map(|m| m.now).sum(),
        members: inside.len(),
        share: if total == 0 {
            0.0
        } else {
            grown as f64 / total as f64
        },
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    const MIB: u64 = 1 << 20;

    fn info(tgid: u32) -> crate::host::proctable::ProcInfo {
        crate::host::proctable::ProcInfo {
            tgid,
            ppid: 0,
            comm: crate::kernel::decode::Comm::from_str_lossy("x"),
            kernel_thread: false,
            start_boot_ns: 0,
            cgroups: Arc::from(Vec::new()),
            node: 0,
        }
    }

    fn protected(n: &LineageNode) -> Option<&'static str> {
        match n.tgid {
            1 => Some("pid 1"),
            2 => Some("a service manager"),
            _ => None,
        }
    }

    fn grew(node: NodeId, before: u64, now: u64) -> Member {
        Member {
            node,
            now: now * MIB,
            before: Some(before * MIB),
        }
    }

    fn born(node: NodeId, now: u64) -> Member {
        Member {
            node,
            now: now * MIB,
            before: None,
        }
    }

    #[test]
    fn a_server_of_many_small_helpers_is_the_offender_not_its_biggest_helper() {
        // systemd (protected) -> server -> 300 helpers, each 30 MiB, born
        // since the baseline; a bystander service beside it holds 2 GiB.
        let mut l = Lineage::default();
        let init = l.add(None, &info(1));
        let manager = l.add(Some(init), &info(2));
        let server = l.add(Some(manager), &info(100));
        let bystander = l.add(Some(manager), &info(200));
        let mut members = vec![grew(server, 50, 52), grew(bystander, 2048, 2048)];
        for i in 0..300 {
            let helper = l.add(Some(server), &info(1000 + i));
            members.push(born(helper, 30 + u64::from(i % 3)));
        }
        let o = offender(&l, &members, protected).expect("offender");
        assert_eq!((o.node, o.tgid, o.members), (server, 100, 301));
        assert_eq!(o.growth, (2 + 300 * 31) * MIB);
        assert!(o.share > 0.99, "{o:?}");
    }

    #[test]
    fn a_runner_whose_workers_grow_together_is_taken_whole() {
        // shell -> runner -> 4 workers growing 200-260 MiB each, one a bit
        // more than the others; the runner's ghost parent died.
        let mut l = Lineage::default();
        let init = l.add(None, &info(1));
        let shell = l.add(Some(init), &info(10));
        let runner = l.add(Some(shell), &info(11));
        let mut members = vec![grew(runner, 40, 41)];
        for (i, mib) in [200, 210, 220, 260].into_iter().enumerate() {
            let worker = l.add(Some(runner), &info(20 + i as u32));
            members.push(grew(worker, 100, 100 + mib));
        }
        l.died(shell);
        let o = offender(&l, &members, protected).expect("offender");
        assert_eq!(o.node, runner, "the runner, not its biggest worker: {o:?}");
        assert_eq!(o.members, 5);
    }

    /// `--prefer`: a preferred program that grew is taken before the
    /// subtree that grew most; when none grew, the subtree rule decides.
    #[test]
    fn a_preferred_program_that_grew_is_taken_first() {
        let mut l = Lineage::default();
        let init = l.add(None, &info(1));
        let shell = l.add(Some(init), &info(10));
        let build = l.add(Some(shell), &info(11));
        let cache = l.add(Some(shell), &info(12));
        let cache_child = l.add(Some(cache), &info(13));
        let members = [
            grew(build, 100, 900),
            grew(cache, 50, 150),
            grew(cache_child, 10, 30),
        ];
        let is_cache = |n: &LineageNode| n.tgid == 12;
        let o = preferred(&l, &members, protected, is_cache).expect("preferred");
        assert_eq!((o.node, o.members), (cache, 2));
        assert_eq!(o.growth, 120 * MIB);
        // The cache did not grow: no preference applies.
        let still = [grew(build, 100, 900), grew(cache, 150, 150)];
        assert_eq!(preferred(&l, &still, protected, is_cache), None);
        assert_eq!(offender(&l, &still, protected).map(|o| o.node), Some(build));
    }

    #[test]
    fn a_single_hog_under_a_shell_is_killed_alone() {
        let mut l = Lineage::default();
        let init = l.add(None, &info(1));
        let shell = l.add(Some(init), &info(10));
        let hog = l.add(Some(shell), &info(11));
        let quiet = l.add(Some(shell), &info(12));
        let members = [grew(shell, 5, 5), grew(hog, 100, 900), grew(quiet, 50, 51)];
        let o = offender(&l, &members, protected).expect("offender");
        assert_eq!((o.node, o.members), (hog, 1));
    }

    #[test]
    fn growth_counts_not_size_and_protected_ancestors_bound_the_walk() {
        // A database holding 3 GiB steady and a job growing 400 MiB, both
        // under a protected service manager: the job.
        let mut l = Lineage::default();
        let manager = l.add(None, &info(2));
        let db = l.add(Some(manager), &info(50));
        let job = l.add(Some(manager), &info(60));
        let child = l.add(Some(job), &info(61));
        let members = [grew(db, 3072, 3072), grew(job, 10, 10), grew(child, 0, 400)];
        let o = offender(&l, &members, protected).expect("offender");
        assert_eq!(o.node, child, "{o:?}");
        // Nothing grew: no offender.
        assert_eq!(offender(&l, &[grew(db, 3072, 3000)], protected), None);
        // A protected process is never one, even when it grew.
        assert_eq!(offender(&l, &[grew(manager, 1, 900)], protected), None);
    }

    #[test]
    fn a_protected_ancestor_in_the_middle_splits_the_tree() {
        // shell -> sshd (protected, in the middle) -> session -> job: the
        // walk up from the job stops below sshd; the shell above it is
        // never reached.
        let mut l = Lineage::default();
        let shell = l.add(None, &info(10));
        let sshd = l.add(Some(shell), &info(2));
        let session = l.add(Some(sshd), &info(30));
        let job = l.add(Some(session), &info(31));
        let o = offender(&l, &[grew(shell, 5, 5), grew(job, 0, 500)], protected).expect("offender");
        assert_eq!(o.node, job, "{o:?}");
        assert!(o.share > 0.99);
    }

    #[test]
    fn deep_trees_and_reparented_orphans_add_up_at_the_root() {
        // root -> a -> b -> c -> d (each a generation), the middle ones
        // dead (their children re-parented), the leaves growing equally in
        // two branches.
        let mut l = Lineage::default();
        let root = l.add(None, &info(100));
        let a = l.add(Some(root), &info(101));
        let b = l.add(Some(a), &info(102));
        let c = l.add(Some(b), &info(103));
        let d = l.add(Some(c), &info(104));
        let e = l.add(Some(a), &info(105));
        let f = l.add(Some(e), &info(106));
        l.died(b);
        l.died(c);
        let members = [grew(d, 0, 300), grew(f, 0, 300)];
        let o = offender(&l, &members, protected).expect("offender");
        assert_eq!(o.node, a, "the branches meet at a: {o:?}");
        assert_eq!(o.growth, 600 * MIB);
    }
}
