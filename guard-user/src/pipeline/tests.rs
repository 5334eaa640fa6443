//! The detectors' glue on fixtures (see `fixture`): what each plugin and
//! the pipeline's own glue make of synthetic events and readings.

mod blocked;
mod crashloop;
mod fork;
mod incidents;
mod kernel;
mod leak;
mod memory;
mod refusal;
mod report;
mod snapshot;

mod actions {
    use crate::{pipeline::still_to_contain, respond::act::ProcState, respond::policy::ActionKind};

    #[test]
    fn stopped_members_are_done_for_stop_and_left_for_kill() {
        use ProcState::*;
        let left = |kind| {
            [Gone, Zombie, Stopped, Running]
                .into_iter()
                .filter(|&s| still_to_contain(kind, s))
                .collect::<Vec<_>>()
        };
        assert_eq!(left(ActionKind::Stop), vec![Running]);
        assert_eq!(left(ActionKind::Kill), vec![Stopped, Running]);
    }
}

mod countable {
    use crate::{
        detect::switches::Detector,
        output::record::{ActionResult, Counted, Rule},
        pipeline::fixture::settings,
        respond::policy::{ActionKind, CgroupPolicy, Policies},
    };

    #[test]
    fn every_running_rule_and_configured_action_is_primed() {
        let mut s = settings();
        s.fork_action = ActionKind::Kill;
        s.off = vec![Detector::Blocked];
        s.policies = Policies::new(vec![CgroupPolicy {
            cgroup: "/sys/fs/cgroup/ci*".into(),
            fork_action: None,
            mem_action: Some(ActionKind::Stop),
            leak_action: Some(ActionKind::Refuse),
            crashloop_action: None,
            namespace: None,
        }])
        .expect("a valid policy");
        let counted = s.countable();
        for c in [
            Counted::Alert(Detector::Fork, Rule::Explosion),
            Counted::Alert(Detector::Memory, Rule::MemoryHeadroom),
            Counted::Action(Detector::Fork, ActionKind::Kill, ActionResult::Contained),
            Counted::Action(Detector::Fork, ActionKind::Kill, ActionResult::NotContained),
            Counted::Action(Detector::Memory, ActionKind::Stop, ActionResult::Contained),
            Counted::Action(Detector::Leak, ActionKind::Refuse, ActionResult::Refusing),
        ] {
            assert!(counted.contains(&c), "{c:?} not in {counted:?}");
        }
        // Off: nothing; log: no action; a plain refusal is never contained.
        assert!(!counted.contains(&Counted::Alert(Detector::Blocked, Rule::BlockedStorm)));
        assert!(!counted.iter().any(|c| matches!(
            c,
            Counted::Action(_, ActionKind::Log, _)
                | Counted::Action(Detector::Crashloop, ..)
                | Counted::Action(_, ActionKind::Refuse, ActionResult::Contained)
        )));
        // Where the kernel cannot refuse, a refusal is counted as what it
        // becomes (log: nothing).
        s.refusal_available = false;
        assert!(
            !s.countable()
                .iter()
                .any(|c| matches!(c, Counted::Action(Detector::Leak, ..)))
        );
    }
}
