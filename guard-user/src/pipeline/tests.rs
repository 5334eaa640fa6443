//! The detectors' glue on fixtures (see `fixture`): what each plugin and
//! the pipeline's own glue make of synthetic events and readings.

mod blocked;
mod crashloop;
mod fork;
mod kernel;
mod leak;
mod memory;
mod refusal;

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
