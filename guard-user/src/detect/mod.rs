//! Detectors: pure rules. Events, observations and a clock in; verdicts
//! out. Each detector's whole rule is in its own file.

pub mod blocked;
pub mod crashloop;
pub mod fork;
pub mod leak;
pub mod memory;
pub mod subtree;
pub mod switches;

/// The state of the detectors whose glue the pipeline still holds itself
/// (fork, memory, blocked tasks: they share its tags, pools and baselines).
/// The others are plugins (`pipeline::plugin`).
pub struct Detectors {
    pub fork: fork::ForkDetector,
    pub blocked: blocked::BlockedDetector,
    pub memory: memory::MemoryDetector,
}
