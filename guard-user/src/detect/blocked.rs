//! Blocked-task rule: tasks in uninterruptible sleep (D state) for longer
//! than a threshold, and storms of them.
//!
//! The kernel's `sched_switch` program keeps every task that left the CPU in
//! uninterruptible sleep in the `BLOCKED` map, with the time it blocked; the
//! agent hands this detector a snapshot of that map every sample tick. The
//! rule:
//!
//! - A task blocked for `threshold` or longer is reported once per blocking
//!   (a `blocked` record, with where it waits).
//! - Idle kernel threads (TASK_IDLE) are never in the map. Killable waits
//!   (TASK_KILLABLE: vfork parents, NFS, `mutex_lock_killable`) are reported,
//!   marked `killable`, but do not make a storm: a fatal signal ends them,
//!   and khungtaskd skips them too.
//! - A storm is `storm` or more tasks past the threshold at once,
//!   uninterruptible and not killable. One alert when it starts, naming the
//!   wait most of them share; it is over when fewer than half that many are
//!   still blocked.

use std::collections::HashMap;

use crate::kernel::decode::Comm;

/// The rule's settings.
#[derive(Clone, Copy, Debug)]
pub struct BlockedRules {
    pub threshold_ns: u64,
    /// Tasks blocked past the threshold at once that make a storm.
    pub storm: u32,
}

/// One task of the kernel's `BLOCKED` map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockedTask {
    /// The kernel's key for it (its task_struct address): opaque here.
    pub task: u64,
    pub pid: u32,
    pub tgid: u32,
    /// When it blocked (boot ns).
    pub since_ns: u64,
    /// TASK_KILLABLE.
    pub killable: bool,
    /// The thread's comm as it blocked.
    pub comm: Comm,
}

/// Where a task waits, as /proc shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Wait {
    /// /proc/PID/wchan: the function it sleeps in.
    pub wchan: Option<String>,
    /// /proc/PID/task/TID/stack, innermost frame first, function names only.
    pub frames: Vec<String>,
}

#[derive(Clone, Debug)]
struct Reported {
    task: u64,
    since_ns: u64,
    killable: bool,
    /// When guard reported it.
    reported_ns: u64,
    comm: Comm,
    wait: Wait,
    /// Missing from the last snapshot; released at the next unless the
    /// kernel's `unblocked` record comes first.
    missing_since: Option<u64>,
}

/// A reported task that runs again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Released {
    pub task: u64,
    pub pid: u32,
    pub since_ns: u64,
    /// How long it was blocked, at most (from the snapshot in which it was
    /// last seen blocked to the one that missed it).
    pub blocked_ns: u64,
    pub killable: bool,
}

/// What a snapshot changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Tasks past the threshold not reported yet: to report (with their
    /// wait) through [`BlockedDetector::report`].
    pub crossed: Vec<BlockedTask>,
    /// Reported tasks that are no longer blocked and whose `unblocked`
    /// record never came (the kernel missed the request).
    pub released: Vec<Released>,
}

/// The wait a storm's tasks share.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedWait {
    /// The innermost frames common to the largest group of tasks that sleep
    /// in the same function, innermost first.
    pub frames: Vec<String>,
    /// How many of the storm's tasks are in that group.
    pub tasks: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub enum BlockedVerdict {
    Storm {
        /// Uninterruptible, not killable, past the threshold.
        count: usize,
        /// Killable waits past the threshold (not counted).
        killable: usize,
        pids: Vec<u32>,
        shared: Option<SharedWait>,
        /// How long the longest-blocked of them has been.
        longest_ns: u64,
    },
    StormOver {
        peak: usize,
        lasted_ns: u64,
    },
}

#[derive(Clone, Copy, Debug)]
struct Storm {
    started_ns: u64,
    peak: usize,
}

pub struct BlockedDetector {
    rules: BlockedRules,
    reported: HashMap<u32, Reported>,
    storm: Option<Storm>,
}

impl BlockedDetector {
    pub fn new(rules: BlockedRules) -> Self {
        Self {
            rules,
            reported: HashMap::new(),
            storm: None,
        }
    }

    pub fn rules(&self) -> BlockedRules {
        self.rules
    }

    /// Takes the tasks blocked now (those in scope): returns the ones that
    /// crossed the threshold and the reported ones released without a
    /// kernel record.
    pub fn snapshot(&mut self, now: u64, tasks: &[BlockedTask]) -> Changes {
        let mut changes = Changes::default();
        let mut present: HashMap<u32, u64> = HashMap::with_capacity(tasks.len());
        for task in tasks {
            present.insert(task.pid, task.since_ns);
            let known = self
                .reported
                .get(&task.pid)
                .is_some_and(|r| r.since_ns == task.since_ns);
            if !known && now.saturating_sub(task.since_ns) >= self.rules.threshold_ns {
                changes.crossed.push(task.clone());
            }
        }
        self.reported.retain(|&pid, r| {
            if present.get(&pid) == Some(&r.since_ns) {
                r.missing_since = None;
                return true;
            }
            match r.missing_since {
                None => {
                    r.missing_since = Some(now);
                    true
                }
                Some(missed) => {
                    changes.released.push(Released {
                        task: r.task,
                        pid,
                        since_ns: r.since_ns,
                        blocked_ns: missed.saturating_sub(r.since_ns),
                        killable: r.killable,
                    });
                    false
                }
            }
        });
        changes.crossed.sort_by_key(|t| (t.since_ns, t.pid));
        changes.released.sort_by_key(|r| r.pid);
        changes
    }

    /// Records that `task` was reported, waiting in `wait`.
    pub fn report(&mut self, now: u64, task: &BlockedTask, wait: Wait) {
        self.reported.insert(
            task.pid,
            Reported {
                task: task.task,
                since_ns: task.since_ns,
                killable: task.killable,
                reported_ns: now,
                comm: task.comm,
                wait,
                missing_since: None,
            },
        );
    }

    /// The kernel says `pid` ran again after the blocking that began at
    /// `since_ns`; true when that blocking was reported.
    pub fn unblocked(&mut self, pid: u32, since_ns: u64) -> bool {
        if self
            .reported
            .get(&pid)
            .is_some_and(|r| r.since_ns == since_ns)
        {
            self.reported.remove(&pid);
            return true;
        }
        false
    }

    /// Tasks reported blocked and not released yet.
    pub fn blocked_now(&self) -> usize {
        self.reported.len()
    }

    /// Those tasks: (pid, comm, blocked since (boot ns), wchan), longest
    /// blocked first.
    pub fn reported(&self) -> Vec<(u32, Comm, u64, Option<&str>)> {
        let mut tasks: Vec<_> = self
            .reported
            .iter()
            .map(|(&pid, r)| (pid, r.comm, r.since_ns, r.wait.wchan.as_deref()))
            .collect();
        tasks.sort_by_key(|&(pid, _, since, _)| (since, pid));
        tasks
    }

    /// When guard reported `pid`'s current blocking.
    pub fn reported_at(&self, pid: u32) -> Option<u64> {
        self.reported.get(&pid).map(|r| r.reported_ns)
    }

    /// Whether a storm is under way.
    pub fn in_storm(&self) -> bool {
        self.storm.is_some()
    }

    /// Starts or ends a storm.
    pub fn check(&mut self, now: u64) -> Option<BlockedVerdict> {
        let blocked: Vec<(&u32, &Reported)> = self
            .reported
            .iter()
            .filter(|(_, r)| r.missing_since.is_none())
            .collect();
        let (killable, hard): (Vec<_>, Vec<_>) = blocked.into_iter().partition(|(_, r)| r.killable);
        let count = hard.len();
        match &mut self.storm {
            None if count >= self.rules.storm as usize && count > 0 => {
                self.storm = Some(Storm {
                    started_ns: now,
                    peak: count,
                });
                let mut pids: Vec<u32> = hard.iter().map(|(pid, _)| **pid).collect();
                pids.sort_unstable();
                let waits: Vec<&Wait> = hard.iter().map(|(_, r)| &r.wait).collect();
                Some(BlockedVerdict::Storm {
                    count,
                    killable: killable.len(),
                    pids,
                    shared: shared_wait(&waits),
                    longest_ns: hard
                        .iter()
                        .map(|(_, r)| now.saturating_sub(r.since_ns))
                        .max()
                        .unwrap_or(0),
                })
            }
            None => None,
            Some(storm) => {
                storm.peak = storm.peak.max(count);
                if count * 2 >= self.rules.storm as usize && count > 0 {
                    return None;
                }
                let over = BlockedVerdict::StormOver {
                    peak: storm.peak,
                    lasted_ns: now.saturating_sub(storm.started_ns),
                };
                self.storm = None;
                Some(over)
            }
        }
    }
}

/// The wait most tasks share: group by innermost frame (or wchan when the
/// stack is unreadable), take the largest group, keep the innermost frames
/// all its members have in common.
pub fn shared_wait(waits: &[&Wait]) -> Option<SharedWait> {
    let leaf = |w: &Wait| w.frames.first().cloned().or_else(|| w.wchan.clone());
    let mut groups: HashMap<String, Vec<&Wait>> = HashMap::new();
    for w in waits {
        if let Some(l) = leaf(w) {
            groups.entry(l).or_default().push(w);
        }
    }
    let (leaf, group) = groups
        .into_iter()
        .max_by(|a, b| a.1.len().cmp(&b.1.len()).then_with(|| b.0.cmp(&a.0)))?;
    let mut frames: Vec<String> = group[0].frames.clone();
    for w in &group[1..] {
        let common = frames
            .iter()
            .zip(&w.frames)
            .take_while(|(a, b)| a == b)
            .count();
        frames.truncate(common);
    }
    if frames.is_empty() {
        frames.push(leaf);
    }
    Some(SharedWait {
        frames,
        tasks: group.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn rules() -> BlockedRules {
        BlockedRules {
            threshold_ns: 2 * S,
            storm: 3,
        }
    }

    fn task(pid: u32, since_ns: u64) -> BlockedTask {
        BlockedTask {
            task: 0xffff_0000 + u64::from(pid),
            pid,
            tgid: pid,
            since_ns,
            killable: false,
            comm: Comm::from_str_lossy("writer"),
        }
    }

    fn wait(frames: &[&str]) -> Wait {
        Wait {
            wchan: frames.first().map(|f| f.to_string()),
            frames: frames.iter().map(|f| f.to_string()).collect(),
        }
    }

    #[test]
    fn a_task_is_reported_once_when_it_crosses_the_threshold() {
        let mut d = BlockedDetector::new(rules());
        let t = task(10, 100 * S);
        assert!(
            d.snapshot(101 * S, std::slice::from_ref(&t))
                .crossed
                .is_empty()
        );
        let changes = d.snapshot(102 * S, std::slice::from_ref(&t));
        assert_eq!(changes.crossed, vec![t.clone()]);
        d.report(102 * S, &t, Wait::default());
        assert!(
            d.snapshot(103 * S, std::slice::from_ref(&t))
                .crossed
                .is_empty()
        );
        assert_eq!(d.reported_at(10), Some(102 * S));
        // Blocked again later: a new blocking, reported again.
        let again = task(10, 110 * S);
        assert_eq!(
            d.snapshot(112 * S, std::slice::from_ref(&again)).crossed,
            vec![again]
        );
    }

    #[test]
    fn the_kernel_record_releases_a_reported_task() {
        let mut d = BlockedDetector::new(rules());
        let t = task(10, 100 * S);
        d.report(102 * S, &t, Wait::default());
        assert!(!d.unblocked(10, 99 * S), "another blocking");
        assert!(d.unblocked(10, 100 * S));
        assert!(!d.unblocked(10, 100 * S), "only once");
        assert_eq!(d.snapshot(104 * S, &[]), Changes::default());
    }

    #[test]
    fn a_task_missing_from_two_snapshots_is_released_without_the_record() {
        let mut d = BlockedDetector::new(rules());
        let t = task(10, 100 * S);
        d.report(102 * S, &t, Wait::default());
        // First miss: the kernel's record may still be on its way.
        assert!(d.snapshot(103 * S, &[]).released.is_empty());
        let changes = d.snapshot(104 * S, &[]);
        assert_eq!(
            changes.released,
            vec![Released {
                task: 0xffff_0000 + 10,
                pid: 10,
                since_ns: 100 * S,
                blocked_ns: 3 * S,
                killable: false
            }]
        );
        assert!(d.snapshot(105 * S, &[]).released.is_empty());
    }

    #[test]
    fn a_storm_starts_once_at_n_tasks_and_ends_below_half() {
        let mut d = BlockedDetector::new(rules());
        let stack = ["percpu_rwsem_wait", "mnt_want_write", "path_openat"];
        for pid in 1..=2 {
            d.report(10 * S, &task(pid, 5 * S), wait(&stack));
        }
        assert_eq!(d.check(10 * S), None, "two is not a storm");
        d.report(
            11 * S,
            &task(3, 6 * S),
            wait(&["percpu_rwsem_wait", "__sb_start_write", "vfs_write"]),
        );
        let Some(BlockedVerdict::Storm {
            count,
            killable,
            pids,
            shared,
            longest_ns,
        }) = d.check(11 * S)
        else {
            panic!("no storm");
        };
        assert_eq!((count, killable, pids), (3, 0, vec![1, 2, 3]));
        assert_eq!(longest_ns, 6 * S);
        assert_eq!(
            shared,
            Some(SharedWait {
                frames: vec!["percpu_rwsem_wait".into()],
                tasks: 3
            })
        );
        assert_eq!(d.check(12 * S), None, "one alert per storm");
        assert!(d.unblocked(3, 6 * S));
        assert!(d.unblocked(2, 5 * S));
        assert_eq!(
            d.check(13 * S),
            Some(BlockedVerdict::StormOver {
                peak: 3,
                lasted_ns: 2 * S
            })
        );
        assert!(!d.in_storm());
    }

    #[test]
    fn killable_waits_are_reported_but_make_no_storm() {
        let mut d = BlockedDetector::new(rules());
        let vfork_parents: Vec<BlockedTask> = (1..=5)
            .map(|pid| BlockedTask {
                killable: true,
                ..task(pid, S)
            })
            .collect();
        let changes = d.snapshot(3 * S, &vfork_parents);
        assert_eq!(changes.crossed, vfork_parents, "reported all the same");
        for t in &vfork_parents {
            d.report(3 * S, t, wait(&["wait_for_vfork_done"]));
        }
        assert_eq!(d.check(3 * S), None);
        d.report(3 * S, &task(6, S), Wait::default());
        d.report(3 * S, &task(7, S), Wait::default());
        d.report(3 * S, &task(8, S), Wait::default());
        let Some(BlockedVerdict::Storm {
            count,
            killable,
            shared,
            ..
        }) = d.check(3 * S)
        else {
            panic!("no storm");
        };
        assert_eq!((count, killable, shared), (3, 5, None));
    }

    #[test]
    fn the_shared_wait_is_that_of_the_largest_group() {
        let a = wait(&["percpu_rwsem_wait", "mnt_want_write", "path_openat"]);
        let b = wait(&["percpu_rwsem_wait", "mnt_want_write", "do_truncate"]);
        let c = wait(&["io_schedule", "folio_wait_bit"]);
        assert_eq!(
            shared_wait(&[&a, &c, &b]),
            Some(SharedWait {
                frames: vec!["percpu_rwsem_wait".into(), "mnt_want_write".into()],
                tasks: 2
            })
        );
        let unreadable = Wait {
            wchan: Some("rq_qos_wait".into()),
            frames: Vec::new(),
        };
        assert_eq!(
            shared_wait(&[&unreadable]),
            Some(SharedWait {
                frames: vec!["rq_qos_wait".into()],
                tasks: 1
            })
        );
        assert_eq!(shared_wait(&[]), None);
    }
}
