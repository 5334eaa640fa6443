//! Readings of cgroup and host counters that events do not carry: task
//! counts and pids limits, for the fork detector's trend rule.

use std::path::Path;

/// (tasks now, limit) of a cgroup directory with a pids controller; the
/// limit is `None` when pids.max says "max". `None` when the directory has
/// no pids files (no controller there, or the hierarchy root).
pub fn cgroup_pids(dir: &str) -> Option<(u64, Option<u64>)> {
    let dir = Path::new(dir);
    let current = std::fs::read_to_string(dir.join("pids.current"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let max = std::fs::read_to_string(dir.join("pids.max")).ok()?;
    Some((current, parse_limit(&max)))
}

/// "max" → no limit.
pub fn parse_limit(text: &str) -> Option<u64> {
    match text.trim() {
        "max" => None,
        n => n.parse().ok(),
    }
}

/// (tasks on the host, the lower of kernel.pid_max and kernel.threads-max).
pub fn host_pids() -> Option<(u64, u64)> {
    // /proc/loadavg: "0.00 0.01 0.05 1/234 5678": runnable/total tasks.
    let loadavg = std::fs::read_to_string("/proc/loadavg").ok()?;
    let total = loadavg
        .split_whitespace()
        .nth(3)?
        .split_once('/')?
        .1
        .parse()
        .ok()?;
    let read = |p: &str| std::fs::read_to_string(p).ok()?.trim().parse::<u64>().ok();
    let limit = match (
        read("/proc/sys/kernel/pid_max"),
        read("/proc/sys/kernel/threads-max"),
    ) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b)?,
    };
    Some((total, limit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_means_no_limit() {
        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(parse_limit("1000\n"), Some(1000));
        assert_eq!(parse_limit("junk"), None);
    }

    #[test]
    fn host_counts_are_readable() {
        let (total, limit) = host_pids().expect("host pids");
        assert!(total > 0 && limit > total, "{total} of {limit}");
    }
}
