//! Detectors: pure rules. Events, observations and a clock in; verdicts
//! out. Each detector's whole rule is in its own file.

pub mod fork;
