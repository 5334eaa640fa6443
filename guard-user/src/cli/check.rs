//! `guard check`: whether and how guard can run on this host, as a table,
//! loading nothing but aya's trivial feature probe for LSM programs. Each row is a fact of the host (read the way
//! the agent reads it: the same BTF reader, probe table, tracefs and
//! cgroup discovery) and what it turns on or off in guard. Exits non-zero
//! when guard cannot run.

use std::{fmt::Write as _, path::Path};

use crate::{host::cgroup::Hierarchies, kernel::btf::Btf, kernel::probes::PROBES};

/// How a row bears on running guard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// Guard runs, with something off.
    Degraded,
    /// Guard cannot run.
    Missing,
}

impl Verdict {
    fn word(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Degraded => "degraded",
            Verdict::Missing => "MISSING",
        }
    }
}

pub struct Row {
    pub item: String,
    pub verdict: Verdict,
    pub found: String,
    /// What it means for guard.
    pub effect: String,
}

fn row(
    item: impl Into<String>,
    verdict: Verdict,
    found: impl Into<String>,
    effect: impl Into<String>,
) -> Row {
    Row {
        item: item.into(),
        verdict,
        found: found.into(),
        effect: effect.into(),
    }
}

/// Capability numbers guard cares about, with what each gives it.
const CAPABILITIES: &[(u32, &str, &str)] = &[
    (39, "CAP_BPF", "load BPF programs and maps"),
    (38, "CAP_PERFMON", "attach tracing programs"),
    (
        21,
        "CAP_SYS_ADMIN",
        "stand in for BPF and PERFMON, and mount tracefs when it is missing",
    ),
    (5, "CAP_KILL", "signal offenders of other users"),
    (
        19,
        "CAP_SYS_PTRACE",
        "read other processes' wchan and stack",
    ),
    (14, "CAP_IPC_LOCK", "lock its memory"),
    (
        24,
        "CAP_SYS_RESOURCE",
        "set its oom_score_adj to -1000 and raise the memlock limit",
    ),
    (
        23,
        "CAP_SYS_NICE",
        "take nice -20, and SCHED_FIFO during a bomb",
    ),
];

/// Every row, in the order printed.
pub fn rows(btf_path: &Path) -> Vec<Row> {
    let mut rows = Vec::new();
    rows.push(row(
        "kernel",
        Verdict::Ok,
        kernel_release(),
        "facts below come from the kernel itself, not its version",
    ));
    let btf = Btf::from_file(btf_path);
    match &btf {
        Ok(_) => rows.push(row(
            "BTF",
            Verdict::Ok,
            btf_path.display().to_string(),
            "struct offsets and tracepoint prototypes",
        )),
        Err(err) => rows.push(row(
            "BTF",
            Verdict::Missing,
            format!("{err:#}"),
            "guard cannot run: it reads every offset from BTF (--btf FILE gives one)",
        )),
    }
    if let Ok(btf) = &btf {
        let refusal = crate::kernel::lsm::support(btf, false);
        rows.push(match &refusal.why_not {
            None => row(
                "refusal (BPF LSM)",
                Verdict::Ok,
                format!(
                    "bpf in {}",
                    refusal.lsm.as_deref().unwrap_or("the LSM list")
                ),
                "refuse: a lineage's forks fail in the kernel; stop and kill refuse first",
            ),
            Some(why) => row(
                "refusal (BPF LSM)",
                Verdict::Degraded,
                why.clone(),
                "refuse only alerts, a ladder starts at its next rung, stop and kill signal \
                 without refusing first",
            ),
        });
    }
    let caps = crate::host::procfs::effective_capabilities().unwrap_or(0);
    let held = |n: u32| caps & (1 << n) != 0;
    let can_load = (held(39) && held(38)) || held(21);
    for &(n, name, gives) in CAPABILITIES {
        let (verdict, effect) = match (held(n), n) {
            (true, _) => (Verdict::Ok, format!("guard can {gives}")),
            (false, 39 | 38 | 21) if can_load => (
                Verdict::Ok,
                "not needed: the capabilities held cover loading".to_owned(),
            ),
            (false, 39 | 38 | 21) => (
                Verdict::Missing,
                format!("guard cannot run: it cannot {gives}"),
            ),
            (false, _) => (
                Verdict::Degraded,
                format!("without it guard cannot {gives}"),
            ),
        };
        let found = if held(n) { "held" } else { "not held" };
        rows.push(row(name, verdict, found, effect));
    }
    let tracefs = std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|m| crate::kernel::tracefs::find_in_mountinfo(&m));
    rows.push(match &tracefs {
        Some(mp) => row(
            "tracefs",
            Verdict::Ok,
            mp.display().to_string(),
            "classic tracepoints (oom_kill's record)",
        ),
        None => row(
            "tracefs",
            if held(21) {
                Verdict::Ok
            } else {
                Verdict::Degraded
            },
            "not mounted",
            "guard mounts it at /sys/kernel/tracing at start (CAP_SYS_ADMIN)",
        ),
    });
    if let Ok(btf) = &btf {
        for probe in PROBES {
            let classic = matches!(probe.hook, crate::kernel::probes::Hook::Classic { .. });
            let (verdict, found) = if classic && tracefs.is_none() {
                // Its format file is in tracefs, which guard mounts at start.
                (
                    if held(21) {
                        Verdict::Ok
                    } else {
                        Verdict::Degraded
                    },
                    "known once tracefs is mounted".to_owned(),
                )
            } else {
                match crate::kernel::probes::unsupported_reason(btf, probe, tracefs.as_deref()) {
                    None => (Verdict::Ok, "present".to_owned()),
                    Some(why) => (Verdict::Degraded, format!("missing: {why}")),
                }
            };
            rows.push(row(
                probe.describe(),
                verdict,
                found,
                format!("{} events", probe.kind.name()),
            ));
        }
        let ring = btf.func_id("bpf_ringbuf_output").is_some();
        rows.push(row(
            "BPF ring buffer",
            if ring { Verdict::Ok } else { Verdict::Missing },
            if ring { "present" } else { "absent (5.8+)" },
            if ring {
                "every record"
            } else {
                "guard cannot run: it writes records there"
            },
        ));
        let kfunc = btf.func_id("bpf_send_signal_task").is_some();
        rows.push(row(
            "bpf_send_signal_task",
            if kfunc {
                Verdict::Ok
            } else {
                Verdict::Degraded
            },
            if kfunc {
                "present (kfunc)"
            } else {
                "absent (6.13+)"
            },
            if kfunc {
                "a condemned bomb's newborns die at birth"
            } else {
                "a condemned bomb's newborns are left to guard's sweep"
            },
        ));
    }
    match Hierarchies::discover() {
        Ok(h) => {
            let v1: Vec<&str> = h
                .list
                .iter()
                .filter(|x| !x.is_v2())
                .map(|x| x.controllers.as_str())
                .collect();
            let v2 = h.list.iter().any(|x| x.is_v2());
            let layout = match (v1.is_empty(), v2) {
                (true, true) => "v2".to_owned(),
                (false, true) => format!("hybrid: v1 {} and v2", v1.join(" ")),
                (false, false) => format!("v1: {}", v1.join(" ")),
                (true, false) => "none".to_owned(),
            };
            let controllers = |name: &str| {
                h.index_of_controller(name).is_some()
                    || h.list.iter().any(|x| {
                        x.is_v2()
                            && std::fs::read_to_string(x.mount.join("cgroup.controllers"))
                                .unwrap_or_default()
                                .split_whitespace()
                                .any(|c| c == name)
                    })
            };
            rows.push(row(
                "cgroups",
                Verdict::Ok,
                layout,
                "--cgroup scopes, cgroup paths in records",
            ));
            for (name, effect) in [
                ("pids", "pids.max projections (trend, rush)"),
                ("memory", "memory pools and the OOM killer's cgroup"),
            ] {
                let on = controllers(name);
                rows.push(row(
                    format!("{name} controller"),
                    if on { Verdict::Ok } else { Verdict::Degraded },
                    if on { "available" } else { "not available" },
                    if on {
                        effect.to_owned()
                    } else {
                        format!("off: {effect}")
                    },
                ));
            }
        }
        Err(err) => rows.push(row(
            "cgroups",
            Verdict::Missing,
            format!("{err:#}"),
            "guard cannot run without a cgroup hierarchy",
        )),
    }
    let psi = std::fs::read_to_string("/proc/pressure/memory").is_ok();
    rows.push(row(
        "PSI",
        if psi { Verdict::Ok } else { Verdict::Degraded },
        if psi {
            "/proc/pressure/memory"
        } else {
            "absent (psi=1 on the kernel command line)"
        },
        if psi {
            "memory pressure rule reads stalls"
        } else {
            "memory pressure rule reads swap-ins and refaults only"
        },
    ));
    rows
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// The table, and whether guard can run.
pub fn report(rows: &[Row]) -> (String, bool) {
    let width = |f: fn(&Row) -> &str| rows.iter().map(|r| f(r).chars().count()).max().unwrap_or(0);
    let (wi, wf) = (width(|r| &r.item), width(|r| &r.found));
    let mut out = String::new();
    for r in rows {
        let _ = writeln!(
            out,
            "{:<wi$}  {:<8}  {:<wf$}  {}",
            r.item,
            r.verdict.word(),
            r.found,
            r.effect
        );
    }
    let runs = rows.iter().all(|r| r.verdict != Verdict::Missing);
    let _ = writeln!(
        out,
        "\n{}",
        if runs {
            "guard can run here."
        } else {
            "guard cannot run here: see the MISSING rows."
        }
    );
    (out, runs)
}
