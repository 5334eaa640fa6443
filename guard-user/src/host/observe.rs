//! Readings of cgroup, host and task state that events do not carry: task
//! counts and pids limits for the fork detector's trend rule, where a
//! blocked task waits, memory pressure.

use std::path::Path;

/// (tasks now, limit) of a cgroup directory with a pids controller; the
/// limit is `None` when pids.max says "max". `None` when the directory has
/// no pids files (no controller there, or the hierarchy root).
pub fn cgroup_pids(dir: &str) -> Option<(u64, Option<u64>)> {
    let dir = &crate::host::cgroup::fs_path(dir);
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

/// A limit file's value: "max" (v2) or a v1 "unlimited" value (PAGE_COUNTER_MAX
/// pages, ~2^63 bytes) mean no limit.
pub fn parse_memory_limit(text: &str) -> Option<u64> {
    match text.trim() {
        "max" => None,
        n => n.parse::<u64>().ok().filter(|&v| v < 1 << 60),
    }
}

/// The memory limit of a cgroup directory: v1 `memory.limit_in_bytes`, or
/// the lower of v2 `memory.max` and `memory.high`. `None`: no limit (or no
/// memory controller there).
pub fn memory_limit(dir: &str) -> Option<u64> {
    let dir = &crate::host::cgroup::fs_path(dir);
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
    if let Some(v1) = read("memory.limit_in_bytes") {
        return parse_memory_limit(&v1);
    }
    let max = read("memory.max").and_then(|t| parse_memory_limit(&t));
    let high = read("memory.high").and_then(|t| parse_memory_limit(&t));
    match (max, high) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Sums `keys` of a memory.stat text.
pub fn stat_sum(text: &str, keys: &[&str]) -> Option<u64> {
    let mut total = 0;
    let mut found = false;
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        if let (Some(k), Some(v)) = (parts.next(), parts.next())
            && keys.contains(&k)
        {
            total += v.parse::<u64>().ok()?;
            found = true;
        }
    }
    found.then_some(total)
}

/// A memory cgroup's usage: anon + shmem (v1 `total_rss` + `total_shmem`,
/// hierarchical; v2 `anon` + `shmem`), everything charged, and the limit.
pub fn memcg_usage(dir: &str) -> Option<crate::detect::memory::MemUsage> {
    let path = &crate::host::cgroup::fs_path(dir);
    let read = |f: &str| std::fs::read_to_string(path.join(f)).ok();
    let limit = memory_limit(dir)?;
    let stat = read("memory.stat")?;
    let (usage, unreclaimable) = match read("memory.usage_in_bytes") {
        Some(v1) => (
            v1.trim().parse().ok()?,
            stat_sum(&stat, &["total_rss", "total_shmem"])?,
        ),
        None => (
            read("memory.current")?.trim().parse().ok()?,
            stat_sum(&stat, &["anon", "shmem"])?,
        ),
    };
    Some(crate::detect::memory::MemUsage {
        unreclaimable,
        usage,
        limit,
    })
}

/// A process's memory that reclaim cannot take back without swap, and
/// what it has in swap already: `RssAnon` + `RssShmem` + `VmSwap` of
/// /proc/PID/status (counters: no lock on its memory map). With swap
/// counted, a runaway being swapped out still shows its growth.
pub fn process_unreclaimable(tgid: u32) -> Option<u64> {
    parse_status_unreclaimable(&std::fs::read_to_string(format!("/proc/{tgid}/status")).ok()?)
}

pub fn parse_status_unreclaimable(text: &str) -> Option<u64> {
    let kb = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    Some((kb("RssAnon:")? + kb("RssShmem:").unwrap_or(0) + kb("VmSwap:").unwrap_or(0)) << 10)
}

/// Pages swapped in, and anon pages refaulted (`workingset_refault_anon`,
/// 5.9+; else every refault), since boot, from /proc/vmstat.
pub fn swap_activity() -> Option<(u64, u64)> {
    parse_swap_activity(&std::fs::read_to_string("/proc/vmstat").ok()?)
}

pub fn parse_swap_activity(text: &str) -> Option<(u64, u64)> {
    let field = |key: &str| {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().parse::<u64>().ok())?
        })
    };
    let refaults = field("workingset_refault_anon").or_else(|| field("workingset_refault"))?;
    Some((field("pswpin")?, refaults))
}

/// The host as a pool: MemTotal − MemAvailable of MemTotal.
pub fn host_memory() -> Option<crate::detect::memory::MemUsage> {
    parse_meminfo(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

pub fn parse_meminfo(text: &str) -> Option<crate::detect::memory::MemUsage> {
    let kb = |key: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(key))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .ok()
            .map(|v| v << 10)
    };
    let total = kb("MemTotal:")?;
    let available = kb("MemAvailable:")?;
    Some(crate::detect::memory::MemUsage {
        unreclaimable: total.saturating_sub(available),
        usage: total.saturating_sub(kb("MemFree:").unwrap_or(available)),
        limit: total,
    })
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
    fn process_memory_counts_anon_shmem_and_swap() {
        let status = "Name:\tworker\nVmRSS:\t  500 kB\nRssAnon:\t  300 kB\nRssFile:\t  150 kB\n\
                      RssShmem:\t   50 kB\nVmSwap:\t  100 kB\n";
        assert_eq!(parse_status_unreclaimable(status), Some(450 << 10));
        assert_eq!(
            parse_status_unreclaimable("Name:\tkthreadd\n"),
            None,
            "no mm"
        );
    }

    #[test]
    fn swap_activity_prefers_anon_refaults() {
        let vmstat =
            "pswpin 120\npswpout 900\nworkingset_refault_anon 77\nworkingset_refault_file 5\n";
        assert_eq!(parse_swap_activity(vmstat), Some((120, 77)));
        let old = "pswpin 3\nworkingset_refault 9\n";
        assert_eq!(parse_swap_activity(old), Some((3, 9)));
        assert_eq!(parse_swap_activity("nr_free_pages 1\n"), None);
    }

    #[test]
    fn memory_limits_on_v1_and_v2() {
        assert_eq!(parse_memory_limit("max\n"), None);
        assert_eq!(parse_memory_limit("9223372036854771712\n"), None);
        assert_eq!(parse_memory_limit("1073741824\n"), Some(1 << 30));
        let v1 =
            "cache 4096\nrss 100\nshmem 0\ntotal_cache 8192\ntotal_rss 1048576\ntotal_shmem 4096\n";
        assert_eq!(stat_sum(v1, &["total_rss", "total_shmem"]), Some(1_052_672));
        let v2 = "anon 2097152\nfile 1048576\nkernel 12288\nshmem 4096\n";
        assert_eq!(stat_sum(v2, &["anon", "shmem"]), Some(2_101_248));
        assert_eq!(stat_sum(v2, &["total_rss"]), None);
    }

    #[test]
    fn meminfo_gives_the_host_pool() {
        let text = "MemTotal:       24576000 kB\nMemFree:        20000000 kB\nMemAvailable:   22000000 kB\n";
        let host = parse_meminfo(text).expect("parse");
        assert_eq!(host.limit, 24_576_000 << 10);
        assert_eq!(host.unreclaimable, 2_576_000 << 10);
        assert_eq!(host.usage, 4_576_000 << 10);
    }

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

/// Everything the detectors' glue reads of the host that events do not
/// carry, behind one trait: [`LiveHost`] reads /proc and the cgroup files;
/// tests give a fixture (a fake cgroup tree, processes' memory, PSI).
pub trait Host {
    /// See [`cgroup_pids`].
    fn cgroup_pids(&self, dir: &str) -> Option<(u64, Option<u64>)>;
    /// See [`host_pids`].
    fn host_pids(&self) -> Option<(u64, u64)>;
    /// See [`memory_limit`].
    fn memory_limit(&self, dir: &str) -> Option<u64>;
    /// See [`memcg_usage`].
    fn memcg_usage(&self, dir: &str) -> Option<crate::detect::memory::MemUsage>;
    /// See [`host_memory`].
    fn host_memory(&self) -> Option<crate::detect::memory::MemUsage>;
    /// See [`process_unreclaimable`].
    fn process_unreclaimable(&self, tgid: u32) -> Option<u64>;
    /// See [`swap_activity`].
    fn swap_activity(&self) -> Option<(u64, u64)>;
    /// See [`memory_pressure`].
    fn memory_pressure(&self) -> Option<MemoryPressure>;
    /// See [`task_wait`].
    fn task_wait(&self, tgid: u32, pid: u32) -> crate::detect::blocked::Wait;
    /// Whether a cgroup directory exists (it was not removed).
    fn cgroup_exists(&self, dir: &str) -> bool;
    /// The cgroup's task, memory and pressure files that exist, by name
    /// (see [`cgroup_files`]): what an incident report keeps.
    fn cgroup_files(&self, _dir: &str) -> std::collections::BTreeMap<String, String> {
        std::collections::BTreeMap::new()
    }

    /// A memory pool's usage: the host's, or a memory cgroup's.
    fn pool_usage(&self, pool: &str) -> Option<crate::detect::memory::MemUsage> {
        if pool == crate::detect::memory::HOST {
            self.host_memory()
        } else {
            self.memcg_usage(pool)
        }
    }
}

/// The host itself.
#[derive(Clone, Copy, Debug, Default)]
pub struct LiveHost;

impl Host for LiveHost {
    fn cgroup_pids(&self, dir: &str) -> Option<(u64, Option<u64>)> {
        cgroup_pids(dir)
    }
    fn host_pids(&self) -> Option<(u64, u64)> {
        host_pids()
    }
    fn memory_limit(&self, dir: &str) -> Option<u64> {
        memory_limit(dir)
    }
    fn memcg_usage(&self, dir: &str) -> Option<crate::detect::memory::MemUsage> {
        memcg_usage(dir)
    }
    fn host_memory(&self) -> Option<crate::detect::memory::MemUsage> {
        host_memory()
    }
    fn process_unreclaimable(&self, tgid: u32) -> Option<u64> {
        process_unreclaimable(tgid)
    }
    fn swap_activity(&self) -> Option<(u64, u64)> {
        swap_activity()
    }
    fn memory_pressure(&self) -> Option<MemoryPressure> {
        memory_pressure()
    }
    fn task_wait(&self, tgid: u32, pid: u32) -> crate::detect::blocked::Wait {
        task_wait(tgid, pid)
    }
    fn cgroup_exists(&self, dir: &str) -> bool {
        crate::host::cgroup::fs_path(dir).exists()
    }
    fn cgroup_files(&self, dir: &str) -> std::collections::BTreeMap<String, String> {
        cgroup_files(dir)
    }
}

/// The files of a cgroup an incident report keeps, where they exist (v1
/// and v2 names), each cut at [`CGROUP_FILE_BYTES`].
pub const CGROUP_FILES: &[&str] = &[
    "pids.current",
    "pids.max",
    "pids.events",
    "memory.current",
    "memory.max",
    "memory.swap.current",
    "memory.usage_in_bytes",
    "memory.limit_in_bytes",
    "memory.events",
    "memory.stat",
    "memory.pressure",
    "cpu.pressure",
    "io.pressure",
];
pub const CGROUP_FILE_BYTES: usize = 4096;

/// See [`Host::cgroup_files`].
pub fn cgroup_files(dir: &str) -> std::collections::BTreeMap<String, String> {
    let base = crate::host::cgroup::fs_path(dir);
    CGROUP_FILES
        .iter()
        .filter_map(|name| {
            let mut text = std::fs::read_to_string(base.join(name)).ok()?;
            if text.len() > CGROUP_FILE_BYTES {
                let mut cut = CGROUP_FILE_BYTES;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text.truncate(cut);
            }
            Some(((*name).to_owned(), text))
        })
        .collect()
}
