//! /proc, parsed in one place: a process's `stat` line and the clock-tick
//! unit its times are in.

use std::path::Path;

/// The fields of /proc/PID/stat guard uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stat {
    pub comm: String,
    /// `R`, `S`, `D`, `T`, `Z`...
    pub state: char,
    pub ppid: u32,
    /// `task_struct.flags` (`PF_KTHREAD` marks a kernel thread).
    pub flags: u64,
    /// Start time since boot, in clock ticks.
    pub start_ticks: u64,
    /// CPU time in user and kernel mode, in clock ticks (every thread's,
    /// the dead ones' included).
    pub cpu_ticks: u64,
}

/// Parses a /proc/PID/stat line. The comm may hold spaces and parentheses,
/// so the fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3 (state); field N is rest[N - 3].
    Some(Stat {
        comm,
        state: rest.first()?.chars().next()?,
        ppid: rest.get(1)?.parse().ok()?,
        flags: rest.get(6)?.parse().ok()?,
        cpu_ticks: rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?,
        start_ticks: rest.get(19)?.parse().ok()?,
    })
}

/// This process's effective capabilities (`CapEff` of /proc/self/status),
/// one bit per capability number.
pub fn effective_capabilities() -> Option<u64> {
    parse_cap_eff(&std::fs::read_to_string("/proc/self/status").ok()?)
}

pub fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// What the agent itself uses: resident bytes and CPU seconds so far.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct OwnUsage {
    pub rss_bytes: u64,
    pub cpu_seconds: f64,
}

/// The agent's own usage (/proc/self/statm and stat).
pub fn own_usage() -> OwnUsage {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|t| t.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    // SAFETY: sysconf reads a constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    let cpu = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|t| parse_stat(&t))
        .map_or(0, |s| s.cpu_ticks);
    OwnUsage {
        rss_bytes: pages * page,
        cpu_seconds: cpu as f64 / clock_ticks_per_sec() as f64,
    }
}

/// /PROC_ROOT/TGID/stat, parsed; `None` when the process is gone.
pub fn stat_in(proc_root: &Path, tgid: u32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(proc_root.join(tgid.to_string()).join("stat")).ok()?)
}

/// /proc/TGID/stat, parsed; `None` when the process is gone.
pub fn stat(tgid: u32) -> Option<Stat> {
    stat_in(Path::new("/proc"), tgid)
}

/// /proc/TGID/stat, telling a process that is gone (`Ok(None)`) from one
/// that could not be read (`Err`: out of descriptors or memory), which
/// must never be taken for gone.
pub fn stat_checked(tgid: u32) -> std::io::Result<Option<Stat>> {
    match std::fs::read_to_string(format!("/proc/{tgid}/stat")) {
        Ok(text) => Ok(parse_stat(&text)),
        // ESRCH: the process died between open and read.
        Err(err)
            if err.kind() == std::io::ErrorKind::NotFound
                || err.raw_os_error() == Some(libc::ESRCH) =>
        {
            Ok(None)
        }
        Err(err) => Err(err),
    }
}

/// The unit of /proc's process times (USER_HZ).
/// The host's name as the kernel has it (`/proc/sys/kernel/hostname`, the
/// UTS namespace guard runs in), or `localhost` when it cannot be read.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

pub fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as u64 } else { 100 }
}

/// Whether `flags` (`task_struct.flags`) mark a task in `do_exit`
/// (`PF_EXITING`).
pub fn is_exiting(flags: u64) -> bool {
    flags & 0x4 != 0
}

/// Whether `flags` (`task_struct.flags`, from /proc or a probe) mark a
/// kernel thread.
pub fn is_kernel_thread(flags: u64) -> bool {
    flags & u64::from(guard_common::PF_KTHREAD) != 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn status_gives_uid_state_and_memory() {
        let d = StatusDetail::parse(
            "Name:\tbash\nState:\tS (sleeping)\nUid:\t1000\t1000\t1000\t1000\nVmRSS:\t    3072 kB\nVmSwap:\t       4 kB\n",
        );
        assert_eq!(d.uid, Some(1000));
        assert_eq!(d.state.as_deref(), Some("S"));
        assert_eq!(d.rss_bytes, Some(3072 * 1024));
        assert_eq!(d.swap_bytes, Some(4096));
    }

    use super::*;

    #[test]
    fn comm_with_spaces_and_parentheses() {
        let line =
            "4242 (my (odd) name) S 1 4242 4242 0 -1 2097216 0 0 0 0 7 5 0 0 20 0 1 0 987 0 0";
        let s = parse_stat(line).expect("parse");
        assert_eq!(s.comm, "my (odd) name");
        assert_eq!(
            (s.state, s.ppid, s.start_ticks, s.cpu_ticks),
            ('S', 1, 987, 12)
        );
        assert!(is_kernel_thread(s.flags), "2097216 has PF_KTHREAD");
        assert_eq!(parse_stat("4242 (x) S"), None);
    }
}

/// What /proc/PID/status says of a process: who runs it, its state, its
/// memory (what an incident report keeps of each member).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatusDetail {
    pub uid: Option<u32>,
    pub state: Option<String>,
    pub rss_bytes: Option<u64>,
    pub swap_bytes: Option<u64>,
}

impl StatusDetail {
    /// From the text of /proc/PID/status.
    pub fn parse(status: &str) -> Self {
        let mut d = StatusDetail::default();
        for line in status.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            let kib = || {
                value
                    .strip_suffix("kB")
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(|v| v * 1024)
            };
            match key {
                "State" => d.state = value.split_whitespace().next().map(str::to_owned),
                "Uid" => d.uid = value.split_whitespace().next().and_then(|u| u.parse().ok()),
                "VmRSS" => d.rss_bytes = kib(),
                "VmSwap" => d.swap_bytes = kib(),
                _ => {}
            }
        }
        d
    }
}

/// `tgid`'s /proc/PID/status, parsed (`None`: gone or unreadable).
pub fn status_detail(tgid: u32) -> Option<StatusDetail> {
    std::fs::read_to_string(format!("/proc/{tgid}/status"))
        .ok()
        .map(|text| StatusDetail::parse(&text))
}
