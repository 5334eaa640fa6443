//! Wiring: loads and attaches the probes, starts the reader, feeds the
//! pipeline events and ticks, runs the actions it requests, and on
//! SIGINT/SIGTERM detaches and summarises.

use std::time::Duration;

use anyhow::{Result, bail};

pub mod budget;
mod notify;
mod priority;
mod report;
mod run;

pub use self::{
    priority::set_realtime,
    run::{check_config, run},
};
use crate::{cli::Args, host::identity::TrustedExes, output::ThreadedStdout, pipeline::Pipeline};

/// How the run ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    Signal,
    /// Whoever read stdout went away (`guard | head`): end quietly.
    BrokenPipe,
}

/// Longest an event line waits before it is handed to the stdout writer:
/// one write (and one wakeup of the writer and of the reader of stdout) per
/// this interval at most, instead of one per batch of events.
const FLUSH_DELAY: Duration = Duration::from_millis(20);

/// How often the trusted executables are looked for again (an upgrade
/// replaces a service manager's inode); SIGHUP looks at once.
const TRUSTED_RESCAN: Duration = Duration::from_secs(60);

/// SIGHUP: reads the config file again. Its policies apply at once; a
/// change to its flags needs a restart (the probes and maps were set up
/// with them): each changed key is named, with its running and its new
/// value; a file that does not parse or check keeps the configuration
/// running and says why.
fn reload_config(
    path: &std::path::Path,
    running: &std::collections::BTreeMap<String, String>,
    insecure: bool,
    pipe: &mut Pipeline<ThreadedStdout>,
) {
    use clap::CommandFactory as _;
    let file = match crate::cli::config::load(path, &Args::command(), insecure) {
        Ok(file) => file,
        Err(err) => {
            tracing::warn!("SIGHUP: keeping the running configuration: {err}");
            return;
        }
    };
    let policies = match crate::respond::policy::Policies::new(file.policies.clone()) {
        Ok(p) => p
            .across(pipe.table.hierarchies())
            .with_pods(pipe.settings.policies.pods().clone()),
        Err(err) => {
            tracing::warn!(
                "SIGHUP: keeping the running configuration: {}: {err}",
                path.display()
            );
            return;
        }
    };
    let count = file.policies.len();
    let changed_policies =
        pipe.settings.policies.rules().cloned().collect::<Vec<_>>() != file.policies;
    pipe.settings.policies = policies;
    tracing::info!(
        "SIGHUP: {} read again; {count} policies apply now{}",
        path.display(),
        if changed_policies {
            " (changed)"
        } else {
            " (unchanged)"
        }
    );
    let changed = crate::cli::config::changed_keys(running, &file.keys);
    if !changed.is_empty() {
        tracing::warn!(
            "SIGHUP: {} changed in {}; they apply when guard restarts (systemctl restart \
             guard), the running values stay until then",
            changed.join(", "),
            path.display()
        );
    }
}

/// Longest the pipeline works through queued batches before it looks at
/// signals, actions and ticks again.
const BATCH_TIME: Duration = Duration::from_millis(50);

/// Longest the agent spends on events still queued once it is asked to
/// stop.
const EXIT_DRAIN: Duration = Duration::from_secs(2);

/// How long one containment may take before it reports what it got.
const ACTION_DEADLINE: Duration = Duration::from_secs(3);

/// The service managers' and `--protect`ed programs' executables, by
/// inode; an error when a `--protect`ed name or path is no trusted
/// executable (protecting it by name would protect anything so named).
fn trusted_executables(protect: &[crate::respond::protect::Protected]) -> Result<TrustedExes> {
    let scan = crate::respond::protect::scan_trusted(protect);
    let asked: Vec<&String> = scan
        .missing
        .iter()
        .filter(|m| !crate::respond::protect::SUPERVISORS.contains(&m.as_str()))
        .collect();
    if let Some(missing) = asked.first() {
        bail!(
            "--protect {missing}: no executable of that name owned by root in root's \
             directories ({}); give the program's path (--protect /opt/app/bin/{missing}, \
             owned by root and writable by no one else), a pid, or a cgroup directory",
            crate::host::identity::TRUSTED_DIRS.join(", ")
        );
    }
    tracing::debug!("{} trusted executables", scan.found.len());
    Ok(TrustedExes::new(scan.found))
}

/// Window of each process's growth, and how long a pool's usage must grow
/// at every reading for the memory horizon rule.
const MEMORY_WINDOW: Duration = Duration::from_secs(2);

/// How often cgroup task counts and limits are read for the trend rule (and
/// the detectors checked when no event arrives).
const SAMPLE_INTERVAL: Duration = Duration::from_millis(250);
