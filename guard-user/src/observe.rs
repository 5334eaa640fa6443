//! Readings of cgroup, host and task state that events do not carry: task
//! counts and pids limits for the fork detector's trend rule, where a
//! blocked task waits, memory pressure.

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

/// Where a task waits: /proc/TGID/task/PID/{wchan,stack}. Read only for
/// tasks already blocked past the threshold (not running, so the stack is
/// stable), once per blocking.
pub fn task_wait(tgid: u32, pid: u32) -> crate::detect::blocked::Wait {
    let dir = Path::new("/proc")
        .join(tgid.to_string())
        .join("task")
        .join(pid.to_string());
    let wchan = std::fs::read_to_string(dir.join("wchan"))
        .ok()
        .map(|w| w.trim().to_owned())
        .filter(|w| !w.is_empty() && w != "0");
    let frames = std::fs::read_to_string(dir.join("stack"))
        .map(|text| parse_stack(&text))
        .unwrap_or_default();
    crate::detect::blocked::Wait { wchan, frames }
}

/// `[<0>] percpu_rwsem_wait+0x15f/0x1d0` → `percpu_rwsem_wait`; a module
/// symbol keeps its module: `ext4_sync_file+0x1/0x2 [ext4]` →
/// `ext4_sync_file [ext4]`.
pub fn parse_stack(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let frame = line.split_once("] ").map_or(line, |(_, f)| f).trim();
            let (symbol, rest) = frame.split_once('+').unwrap_or((frame, ""));
            if symbol.is_empty() {
                return None;
            }
            Some(match rest.split_once(' ') {
                Some((_, module)) => format!("{symbol} {}", module.trim()),
                None => symbol.to_owned(),
            })
        })
        .collect()
}

/// The host's memory pressure (PSI, /proc/pressure/memory): the share of
/// the last 10 s in which some task, and in which every task, stalled on
/// memory. `None` without PSI (CONFIG_PSI off, or psi=0).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MemoryPressure {
    pub some_avg10: f64,
    pub full_avg10: f64,
}

pub fn memory_pressure() -> Option<MemoryPressure> {
    parse_pressure(&std::fs::read_to_string("/proc/pressure/memory").ok()?)
}

pub fn parse_pressure(text: &str) -> Option<MemoryPressure> {
    let avg10 = |prefix: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(prefix))?
            .split_whitespace()
            .find_map(|f| f.strip_prefix("avg10="))?
            .parse()
            .ok()
    };
    Some(MemoryPressure {
        some_avg10: avg10("some ")?,
        full_avg10: avg10("full ").unwrap_or(0.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stacks_keep_function_and_module_names() {
        let text = "[<0>] percpu_rwsem_wait+0x15f/0x1d0\n[<0>] ext4_sync_file+0x1/0x2 [ext4]\n\
                    [<0>] entry_SYSCALL_64_after_hwframe+0x76/0x7e\n";
        assert_eq!(
            parse_stack(text),
            [
                "percpu_rwsem_wait",
                "ext4_sync_file [ext4]",
                "entry_SYSCALL_64_after_hwframe"
            ]
        );
        assert!(parse_stack("").is_empty());
    }

    #[test]
    fn pressure_reads_avg10() {
        let text = "some avg10=12.50 avg60=3.00 avg300=0.50 total=8112\n\
                    full avg10=4.25 avg60=0.00 avg300=0.00 total=6009\n";
        assert_eq!(
            parse_pressure(text),
            Some(MemoryPressure {
                some_avg10: 12.5,
                full_avg10: 4.25
            })
        );
        assert_eq!(parse_pressure("junk"), None);
    }

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
