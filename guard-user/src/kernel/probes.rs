//! The probe table: which program hooks which tracepoint, what each needs
//! from the running kernel, and the per-kernel offsets handed to the programs.
//! Per-kernel facts live here as data; the programs only read `CONFIG`.

use anyhow::{Context as _, Result, ensure};
use guard_common::{
    EventKind, ForkGuardConfig, MemoryProbe, ProbeConfig, RSS_STAT_WORDS, TaskOffsets,
};

use crate::kernel::btf::Btf;

/// How a program attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// A raw tracepoint; `args` is the TP_PROTO argument count the program
    /// relies on (checked against the `btf_trace_<name>` prototype).
    Raw {
        tracepoint: &'static str,
        min_args: u32,
    },
    /// A BTF-enabled raw tracepoint (`tp_btf`, 5.5+): its arguments are
    /// typed, so they can be passed to kfuncs that take trusted pointers.
    Btf {
        tracepoint: &'static str,
        min_args: u32,
    },
    /// A classic tracepoint, attached through tracefs; its record layout comes
    /// from the tracefs `format` file.
    Classic {
        category: &'static str,
        name: &'static str,
    },
}

#[derive(Clone, Copy, Debug)]
pub struct Probe {
    /// The eBPF program (function) name in guard-ebpf.
    pub program: &'static str,
    pub hook: Hook,
    pub kind: EventKind,
    /// Attached whatever `--events` says: the process table or a detector
    /// depends on it.
    pub always_attached: bool,
}

impl Probe {
    pub fn describe(&self) -> String {
        match self.hook {
            Hook::Raw { tracepoint, .. } => format!("raw_tp/{tracepoint}"),
            Hook::Btf { tracepoint, .. } => format!("tp_btf/{tracepoint}"),
            Hook::Classic { category, name } => format!("tracepoint/{category}/{name}"),
        }
    }
}

/// Every probe guard has. The comment beside each program in guard-ebpf says
/// why that hook and which kernels changed it.
pub const PROBES: &[Probe] = &[
    Probe {
        program: "process_fork",
        hook: Hook::Btf {
            tracepoint: "sched_process_fork",
            min_args: 2,
        },
        kind: EventKind::Fork,
        always_attached: true,
    },
    Probe {
        program: "process_exec",
        hook: Hook::Raw {
            tracepoint: "sched_process_exec",
            min_args: 3,
        },
        kind: EventKind::Exec,
        always_attached: true,
    },
    Probe {
        program: "process_exit",
        hook: Hook::Raw {
            tracepoint: "sched_process_exit",
            min_args: 1,
        },
        kind: EventKind::Exit,
        always_attached: true,
    },
    Probe {
        program: "cgroup_attach_task",
        hook: Hook::Raw {
            tracepoint: "cgroup_attach_task",
            min_args: 4,
        },
        kind: EventKind::CgroupAttach,
        always_attached: true,
    },
    Probe {
        program: "cgroup_attach_task",
        hook: Hook::Raw {
            tracepoint: "cgroup_transfer_tasks",
            min_args: 4,
        },
        kind: EventKind::CgroupAttach,
        always_attached: true,
    },
    Probe {
        program: "sched_switch",
        hook: Hook::Raw {
            tracepoint: "sched_switch",
            min_args: 3,
        },
        kind: EventKind::Unblocked,
        always_attached: true,
    },
    Probe {
        program: "rss_stat",
        hook: Hook::Raw {
            tracepoint: "rss_stat",
            min_args: 2,
        },
        kind: EventKind::Rss,
        always_attached: true,
    },
    Probe {
        program: "reclaim_begin",
        hook: Hook::Raw {
            tracepoint: "mm_vmscan_direct_reclaim_begin",
            min_args: 2,
        },
        kind: EventKind::ReclaimStall,
        always_attached: false,
    },
    Probe {
        program: "reclaim_end",
        hook: Hook::Raw {
            tracepoint: "mm_vmscan_direct_reclaim_end",
            min_args: 1,
        },
        kind: EventKind::ReclaimStall,
        always_attached: false,
    },
    Probe {
        program: "reclaim_begin",
        hook: Hook::Raw {
            tracepoint: "mm_vmscan_memcg_reclaim_begin",
            min_args: 2,
        },
        kind: EventKind::ReclaimStall,
        always_attached: false,
    },
    Probe {
        program: "reclaim_end",
        hook: Hook::Raw {
            tracepoint: "mm_vmscan_memcg_reclaim_end",
            min_args: 1,
        },
        kind: EventKind::ReclaimStall,
        always_attached: false,
    },
    Probe {
        program: "mark_victim",
        hook: Hook::Classic {
            category: "oom",
            name: "mark_victim",
        },
        kind: EventKind::OomKill,
        always_attached: false,
    },
    Probe {
        program: "sched_process_hang",
        hook: Hook::Raw {
            tracepoint: "sched_process_hang",
            min_args: 1,
        },
        kind: EventKind::HungTask,
        always_attached: false,
    },
];

/// Why a probe cannot run on this kernel, or `None` when it can.
pub fn unsupported_reason(
    btf: &Btf,
    probe: &Probe,
    tracefs: Option<&std::path::Path>,
) -> Option<String> {
    match probe.hook {
        Hook::Raw {
            tracepoint,
            min_args,
        }
        | Hook::Btf {
            tracepoint,
            min_args,
        } => match btf.raw_tracepoint_args(tracepoint) {
            Ok(Some(n)) if n >= min_args => None,
            Ok(Some(n)) => Some(format!(
                "its prototype has {n} arguments, the program needs {min_args}"
            )),
            Ok(None) => Some("this kernel has no such tracepoint".into()),
            Err(err) => Some(format!("its BTF prototype is unreadable: {err:#}")),
        },
        Hook::Classic { category, name } => {
            let Some(tracefs) = tracefs else {
                return Some("tracefs is not available".into());
            };
            let format = tracefs
                .join("events")
                .join(category)
                .join(name)
                .join("format");
            let denied = |e: &std::io::Error| e.kind() == std::io::ErrorKind::PermissionDenied;
            match std::fs::metadata(&format) {
                Ok(_) => None,
                // Non-root cannot search tracefs: not knowing is not absent.
                Err(e)
                    if denied(&e)
                        || std::fs::read_dir(tracefs.join("events")).is_err_and(|e| denied(&e)) =>
                {
                    Some(format!(
                        "{} cannot be read by this user (permission denied): run as root to know",
                        format.display()
                    ))
                }
                Err(_) => Some(format!(
                    "this kernel has no such tracepoint ({} is missing)",
                    format.display()
                )),
            }
        }
    }
}

/// Resolves the `task_struct` & co. member offsets from BTF.
pub fn task_offsets(btf: &Btf) -> Result<TaskOffsets> {
    let m = |s: &str, f: &str| btf.member_offset(s, f);
    let exit_args = btf.raw_tracepoint_args("sched_process_exit")?.unwrap_or(1);
    let switch_args = btf.raw_tracepoint_args("sched_switch")?.unwrap_or(3);
    // 5.14 renamed `state` to `__state` (and made it an unsigned int).
    let state = m("task_struct", "__state").or_else(|_| m("task_struct", "state"));
    let resolve = || -> Result<TaskOffsets> {
        Ok(TaskOffsets {
            pid: m("task_struct", "pid")?,
            tgid: m("task_struct", "tgid")?,
            comm: m("task_struct", "comm")?,
            flags: m("task_struct", "flags")?,
            exit_code: m("task_struct", "exit_code")?,
            real_parent: m("task_struct", "real_parent")?,
            signal: m("task_struct", "signal")?,
            cgroups: m("task_struct", "cgroups")?,
            signal_live: m("signal_struct", "live")?,
            binprm_filename: m("linux_binprm", "filename")?,
            css_set_dfl_cgrp: m("css_set", "dfl_cgrp")?,
            cgroup_kn: m("cgroup", "kn")?,
            kernfs_node_id: m("kernfs_node", "id")?,
            cgroup_root: m("cgroup", "root")?,
            root_hierarchy_id: m("cgroup_root", "hierarchy_id")?,
            // 6.16 added `bool group_dead` to sched_process_exit.
            exit_has_group_dead: u32::from(exit_args >= 2),
            state: state?,
            // 5.18 added `unsigned int prev_state` to sched_switch.
            switch_has_prev_state: u32::from(switch_args >= 4),
            mm: m("task_struct", "mm")?,
            mm_arg_start: m("mm_struct", "arg_start")?,
            mm_arg_end: m("mm_struct", "arg_end")?,
            start_boottime: m("task_struct", "start_boottime")
                .or_else(|_| m("task_struct", "real_start_time"))
                .unwrap_or(guard_common::ABSENT),
            mm_exe_file: m("mm_struct", "exe_file")?,
            file_inode: m("file", "f_inode")?,
            inode_ino: m("inode", "i_ino")?,
            inode_sb: m("inode", "i_sb")?,
            sb_dev: m("super_block", "s_dev")?,
            reserved: 0,
        })
    };
    resolve().context("resolving kernel struct offsets from BTF")
}

/// The fork probe's scope settings: where a task's cgroup in the scope's
/// hierarchy is, and the rule it applies.
pub fn fork_guard_config(
    btf: &Btf,
    scope: &crate::respond::kernel_scope::KernelScope,
) -> Result<ForkGuardConfig> {
    let m = |s: &str, f: &str| btf.member_offset(s, f);
    // Not tagging (enabled 0), the budget's figures are never read.
    let rule = scope.rule.unwrap_or_default();
    let resolve = || -> Result<ForkGuardConfig> {
        Ok(ForkGuardConfig {
            window_ns: rule.window_ns,
            enabled: u32::from(scope.rule.is_some()),
            all_cgroups: u32::from(scope.all_cgroups),
            subsys_index: scope.subsys_index(btf)?,
            css_set_subsys: m("css_set", "subsys")?,
            css_cgroup: m("cgroup_subsys_state", "cgroup")?,
            css_parent: m("cgroup_subsys_state", "parent")?,
            cgroup_self: m("cgroup", "self")?,
            max_births: rule.max_births,
            min_growth: rule.min_growth,
            signal: u32::try_from(rule.signal).unwrap_or(9),
            min_depth: rule.min_depth,
            filter: u32::from(scope.filter),
        })
    };
    resolve().context("resolving the fork probe's cgroup offsets from BTF")
}

/// What the user chooses for the memory programs.
#[derive(Clone, Copy, Debug)]
pub struct MemoryTunables {
    pub rss_step_bytes: u64,
    pub reclaim_stall_us: u32,
}

/// Where `mm_struct`'s resident-memory counters are. 6.2 made them
/// `struct percpu_counter rss_stat[NR_MM_COUNTERS]`; before, a `struct
/// mm_rss_stat { atomic_long_t count[NR_MM_COUNTERS]; }`.
pub fn memory_probe(btf: &Btf, tunables: MemoryTunables) -> Result<MemoryProbe> {
    let m = |s: &str, f: &str| btf.member_offset(s, f);
    let (stride, count) = if btf.struct_size("mm_rss_stat")?.is_some() {
        (8, m("mm_rss_stat", "count")?)
    } else {
        let size = btf
            .struct_size("percpu_counter")?
            .context("struct percpu_counter not found in BTF")?;
        (size, m("percpu_counter", "count")?)
    };
    ensure!(
        (3 * stride + count) as usize / 8 < RSS_STAT_WORDS && count % 8 == 0,
        "mm_struct.rss_stat has an unexpected layout (counters of {stride} bytes, count at {count})"
    );
    // SAFETY: sysconf has no memory effects.
    let page_size = u32::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    Ok(MemoryProbe {
        task_mm: m("task_struct", "mm")?,
        mm_rss_stat: m("mm_struct", "rss_stat")?,
        rss_stride: stride,
        rss_count: count,
        page_size,
        rss_step_pages: u32::try_from((tunables.rss_step_bytes / u64::from(page_size)).max(1))
            .unwrap_or(u32::MAX),
        reclaim_stall_us: tunables.reclaim_stall_us,
        reserved: 0,
    })
}

/// The full `CONFIG` value for this kernel.
pub fn probe_config(
    btf: &Btf,
    tracefs: Option<&std::path::Path>,
    tunables: MemoryTunables,
) -> Result<ProbeConfig> {
    let memory = match memory_probe(btf, tunables) {
        Ok(memory) => memory,
        Err(err) => {
            tracing::warn!("no rss tracking on this kernel: {err:#}");
            ProbeConfig::UNSET.memory
        }
    };
    let mut config = ProbeConfig {
        task: task_offsets(btf)?,
        memory,
        ..ProbeConfig::UNSET
    };
    if let Some(tracefs) = tracefs {
        let path = tracefs.join("events/oom/mark_victim/format");
        if let Ok(text) = std::fs::read_to_string(&path) {
            let fields = crate::kernel::tracefs::parse_format(&text)
                .with_context(|| format!("parsing {}", path.display()))?;
            config.mark_victim = crate::kernel::tracefs::mark_victim_layout(&fields)?;
        }
    }
    Ok(config)
}
