//! What a verdict leads to, and the signal that carries it out: one home
//! for the choice, used by the CLI, the kernel's budgets, containment and
//! the records.

/// What a detector's verdict leads to (`--fork-action`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ActionKind {
    /// Alert only.
    Log,
    /// Freeze the offender (SIGSTOP): what each flag's detector blames.
    Stop,
    /// Kill the offender (SIGKILL).
    Kill,
}

impl ActionKind {
    /// The signal an action sends: SIGSTOP for `stop`, SIGKILL for `kill`
    /// (and for `log`, which sends none).
    pub fn signal(self) -> i32 {
        match self {
            ActionKind::Stop => libc::SIGSTOP,
            _ => libc::SIGKILL,
        }
    }
}
