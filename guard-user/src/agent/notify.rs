//! The service manager's readiness and watchdog protocol (sd_notify, with
//! the `sd-notify` crate): `READY=1` once the probes are attached and the
//! `start` record is out, `WATCHDOG=1` from the pipeline's own loop at half
//! the unit's `WatchdogSec` (a loop that is stuck stops sending, and
//! systemd restarts guard), `STOPPING=1` when asked to stop. Without
//! `NOTIFY_SOCKET` (not under systemd) every call does nothing.

use std::time::Duration;

use sd_notify::NotifyState;

pub struct ServiceManager {
    /// Half the watchdog interval, when the unit has a watchdog.
    pub ping_every: Option<Duration>,
}

impl ServiceManager {
    pub fn from_env() -> Self {
        Self {
            ping_every: sd_notify::watchdog_enabled().map(|d| d / 2),
        }
    }

    fn send(&self, state: &[NotifyState<'_>]) {
        if let Err(err) = sd_notify::notify(state) {
            tracing::debug!("telling the service manager {state:?}: {err}");
        }
    }

    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    pub fn alive(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping]);
    }
}
