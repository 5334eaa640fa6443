use std::collections::HashMap;

use super::*;

/// A fake system where a condemned, running member forks a child every
/// round (as a bomb does) unless the probe's signal gets it first.
#[derive(Default)]
struct Bomb {
    inner: std::cell::RefCell<BombState>,
}

#[derive(Default)]
struct BombState {
    procs: HashMap<u32, (ProcState, Option<u64>)>,
    protected: std::collections::HashSet<u32>,
    /// Members that die at the moment their protection is judged.
    dies_when_judged: std::collections::HashSet<u32>,
    condemned: HashMap<u64, i32>,
    next_pid: u32,
    log: Vec<(u32, i32)>,
    /// Members /proc cannot be read for (out of descriptors).
    unreadable: std::collections::HashSet<u32>,
    held: Vec<u64>,
}

impl Bomb {
    fn with(members: &[u32]) -> Self {
        let mut state = BombState {
            next_pid: 1000,
            ..Default::default()
        };
        for &m in members {
            state.procs.insert(m, (ProcState::Running, None));
        }
        Bomb {
            inner: std::cell::RefCell::new(state),
        }
    }

    fn st(&self) -> std::cell::RefMut<'_, BombState> {
        self.inner.borrow_mut()
    }
}

impl BombState {
    fn apply(&mut self, tgid: u32, signal: i32) {
        if let Some(p) = self.procs.get_mut(&tgid) {
            p.0 = match signal {
                libc::SIGKILL => ProcState::Zombie,
                libc::SIGSTOP => ProcState::Stopped,
                _ => p.0,
            };
        }
    }
}

impl System for Bomb {
    fn tag(&self, tgid: u32, _born: u64, tag: u64) -> Reach {
        let mut st = self.st();
        if st.unreadable.contains(&tgid) {
            return Reach::Failed("Too many open files (os error 24)".into());
        }
        match st.procs.get_mut(&tgid) {
            Some(p) if p.0 != ProcState::Gone => {
                p.1 = Some(tag);
                Reach::Done
            }
            _ => Reach::NotOurs,
        }
    }
    fn condemn(&self, tag: u64, signal: i32) {
        let mut st = self.st();
        st.condemned.insert(tag, signal);
        // Every running tagged member tries to fork once: the probe
        // signals it, the child inherits the tag.
        let forkers: Vec<(u32, u64)> = st
            .procs
            .iter()
            .filter(|(t, p)| p.0 == ProcState::Running && !st.protected.contains(t))
            .filter_map(|(&t, p)| Some((t, p.1?)))
            .collect();
        for (t, tag) in forkers {
            st.next_pid += 1;
            let child = st.next_pid;
            st.procs.insert(child, (ProcState::Running, Some(tag)));
            st.apply(t, signal);
        }
    }
    fn release(&self, tag: u64) {
        self.st().condemned.remove(&tag);
    }
    fn tagged(&self, tag: u64) -> Vec<u32> {
        let st = self.inner.borrow();
        st.procs
            .iter()
            .filter(|(_, p)| p.1 == Some(tag) && p.0 != ProcState::Gone)
            .map(|(&t, _)| t)
            .collect()
    }
    fn signal_tagged(&self, tgid: u32, tag: u64, signal: i32) -> Reach {
        let mut st = self.st();
        if st.procs.get(&tgid).and_then(|p| p.1) != Some(tag) {
            return Reach::NotOurs;
        }
        st.log.push((tgid, signal));
        st.apply(tgid, signal);
        Reach::Done
    }
    fn tag_of(&self, tgid: u32) -> Option<u64> {
        self.inner.borrow().procs.get(&tgid).and_then(|p| p.1)
    }
    fn hold(&self, tag: u64, _signal: i32) {
        self.st().held.push(tag);
    }
    fn protected(&self, tgid: u32) -> Option<&'static str> {
        let mut st = self.st();
        if st.dies_when_judged.contains(&tgid) {
            if let Some(p) = st.procs.get_mut(&tgid) {
                p.0 = ProcState::Gone;
            }
            return Some("outside the --cgroup scope");
        }
        st.protected.contains(&tgid).then_some("named by --protect")
    }
    fn untag(&self, tgid: u32) {
        if let Some(p) = self.st().procs.get_mut(&tgid) {
            p.1 = None;
        }
    }
    fn state(&self, tgid: u32) -> ProcState {
        if self.inner.borrow().unreadable.contains(&tgid) {
            return ProcState::Unknown;
        }
        self.inner
            .borrow()
            .procs
            .get(&tgid)
            .map_or(ProcState::Gone, |p| p.0)
    }
}

fn members(tgids: &[u32]) -> Vec<Member> {
    tgids
        .iter()
        .map(|&tgid| Member { tgid, born_ns: 0 })
        .collect()
}

#[test]
fn kill_converges_on_members_born_while_acting() {
    let sys = Bomb::with(&[10, 11, 12]);
    // An unrelated process in the same cgroup.
    sys.st().procs.insert(99, (ProcState::Running, None));
    let out = contain(
        &sys,
        7,
        &members(&[10, 11, 12]),
        ActionKind::Kill,
        Duration::from_secs(1),
    );
    assert!(out.contained, "{out:?}");
    assert_eq!(out.running, 0);
    // The members forked under condemnation: the probe killed them; their
    // children (tagged at birth) got the sweep's SIGKILL.
    assert_eq!(out.signalled, 3, "the 3 children born under condemnation");
    assert_eq!((out.died, out.zombies), (3, 3));
    for t in [10, 11, 12, 1001, 1002, 1003] {
        assert_eq!(sys.state(t), ProcState::Zombie, "{t}");
    }
    let stops = sys
        .inner
        .borrow()
        .log
        .iter()
        .filter(|l| l.1 == libc::SIGSTOP)
        .count();
    assert_eq!(stops, 0, "kill never stops first");
    assert_eq!(
        sys.state(99),
        ProcState::Running,
        "the bystander is untouched"
    );
    let st = sys.inner.borrow();
    assert!(st.log.iter().all(|&(t, _)| t != 99));
    assert!(st.condemned.is_empty(), "condemnation released");
    // Kill is the last signal every member got.
    for t in [10, 11, 12] {
        let signals: Vec<i32> = st.log.iter().filter(|l| l.0 == t).map(|l| l.1).collect();
        assert!(
            signals.is_empty() || signals.last() == Some(&libc::SIGKILL),
            "{t}: {signals:?}"
        );
    }
}

#[test]
fn a_tagged_member_that_is_protected_now_is_never_signalled() {
    // 41 carries the tag (inherited in the kernel) but has since become
    // something protected (an exec into a protected program, say).
    let sys = Bomb::with(&[40, 41]);
    sys.st().protected.insert(41);
    sys.st().procs.get_mut(&41).expect("41").1 = Some(5);
    let out = contain(
        &sys,
        5,
        &members(&[40]),
        ActionKind::Kill,
        Duration::from_millis(200),
    );
    assert!(
        sys.inner.borrow().log.iter().all(|&(t, _)| t != 41),
        "41 was signalled"
    );
    assert_eq!(sys.state(41), ProcState::Running);
    assert!(
        out.running == 0,
        "a spared process does not count as escaped: {out:?}"
    );
    assert_eq!(out.spared, 1, "{out:?}");
}

#[test]
fn a_member_that_dies_while_judged_is_not_spared() {
    let sys = Bomb::with(&[50, 51]);
    sys.st().dies_when_judged.insert(51);
    let out = contain(
        &sys,
        6,
        &members(&[50, 51]),
        ActionKind::Kill,
        Duration::from_millis(200),
    );
    assert_eq!(out.spared, 0, "a dead member taken for protected: {out:?}");
    assert!(out.contained, "{out:?}");
}

#[test]
fn stop_leaves_everyone_stopped_and_log_does_nothing() {
    let sys = Bomb::with(&[20, 21]);
    let out = contain(
        &sys,
        8,
        &members(&[20, 21]),
        ActionKind::Stop,
        Duration::from_secs(1),
    );
    assert!(
        out.contained && out.died == 0 && out.running == 0,
        "{out:?}"
    );
    assert!(
        sys.inner
            .borrow()
            .procs
            .values()
            .all(|p| p.0 == ProcState::Stopped)
    );
    let quiet = Bomb::with(&[30]);
    let out = contain(
        &quiet,
        9,
        &members(&[30]),
        ActionKind::Log,
        Duration::from_secs(1),
    );
    assert_eq!(out.signalled, 0);
    assert!(quiet.inner.borrow().log.is_empty() && quiet.inner.borrow().condemned.is_empty());
}

#[test]
fn an_unreadable_member_is_an_error_never_gone_and_the_condemnation_is_held() {
    // 51's /proc and pidfd fail with EMFILE: it is running for all guard
    // knows, so the subtree is not contained, and the kernel keeps the
    // condemnation.
    let sys = Bomb::with(&[50, 51]);
    sys.st().unreadable.insert(51);
    let out = contain(
        &sys,
        11,
        &members(&[50, 51]),
        ActionKind::Kill,
        Duration::from_millis(200),
    );
    assert!(!out.contained, "{out:?}");
    assert_eq!(out.errors, 1, "{out:?}");
    assert!(
        out.error
            .as_deref()
            .is_some_and(|e| e.contains("tagging 51")),
        "{out:?}"
    );
    assert!(out.condemnation_held);
    assert_eq!(sys.inner.borrow().held, vec![11]);
    assert!(
        sys.inner.borrow().condemned.contains_key(&11),
        "not released"
    );
    // Once readable and dead, a second pass verifies it and releases.
    sys.st().unreadable.clear();
    let out = contain(
        &sys,
        11,
        &members(&[51]),
        ActionKind::Kill,
        Duration::from_millis(200),
    );
    assert!(out.contained && out.errors == 0, "{out:?}");
    assert!(!sys.inner.borrow().condemned.contains_key(&11));
}
