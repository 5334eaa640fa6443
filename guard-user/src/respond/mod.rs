//! The response: what a verdict leads to, what is never touched, and the
//! only code that signals other processes or runs the operator's hooks.
//!
//! - `policy`: what a verdict leads to (log, refuse, stop, kill, ladders)
//!   per cgroup.
//! - `protect`: what is never signalled (PID 1, kernel threads, guard and
//!   its ancestors, service managers by executable, `--protect`).
//! - `kernel_scope`: what the fork probe enforces by itself, and its scope.
//! - `act`: containment, verified; the only module that signals processes.
//! - `refusal`: refusals in force: trying or quiet, the ladder, the end.
//! - `hook`: `--on-alert`, the operator's command run per alert and action.

pub mod act;
pub mod hook;
pub mod kernel_scope;
pub mod policy;
pub mod protect;
pub mod refusal;
