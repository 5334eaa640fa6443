//! Detectors: pure rules. Events, observations and a clock in; verdicts
//! out. Each detector's whole rule is in its own file.

pub mod blocked;
pub mod crashloop;
pub mod fork;
pub mod leak;
pub mod memory;
pub mod subtree;
pub mod switches;

/// Every detector's state, as the pipeline holds it.
pub struct Detectors {
    pub fork: fork::ForkDetector,
    pub crashloop: crashloop::CrashLoopDetector,
    pub blocked: blocked::BlockedDetector,
    pub memory: memory::MemoryDetector,
    pub leak: leak::LeakDetector,
}
