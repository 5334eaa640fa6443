//! Loads the embedded eBPF object with this kernel's offsets, hands out its
//! maps, and attaches the probes the probe table allows on this kernel.
//!
//! Nothing is pinned: every program, link and map lives only as long as the
//! agent's file descriptors, so a SIGKILLed agent leaves nothing attached.

use std::{collections::BTreeSet, path::PathBuf};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, Lsm, RawTracePoint, TracePoint},
};
use guard_common::{EventKind, ProbeConfig};

use crate::{
    kernel::btf::Btf,
    kernel::probes::{Hook, PROBES, Probe},
};

/// The object built by build.rs from guard-ebpf.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/guard"));

pub struct LoadOptions {
    pub btf: PathBuf,
    pub ring_buffer_bytes: u32,
    /// Event kinds the user asked for; probes feeding the process table are
    /// attached regardless.
    pub kinds: BTreeSet<EventKind>,
    pub memory: crate::kernel::probes::MemoryTunables,
    /// What the fork probe enforces by itself.
    pub kernel_scope: crate::respond::kernel_scope::KernelScope,
    /// Attach the LSM program that refuses forks (`kernel::lsm` found the
    /// BPF LSM active).
    pub refusal: bool,
}

/// A loaded object, its probes not yet attached. Dropping it detaches them.
pub struct Loaded {
    ebpf: Ebpf,
    /// The kernel's BTF, as aya reads it (for `tp_btf` programs); dropped
    /// once they are attached (parsed, it takes about 10 MiB).
    btf: Option<aya::Btf>,
    probes: Vec<(&'static Probe, Option<String>)>,
    refusal: bool,
}

/// The object's maps, taken out so that the reader can start before any
/// probe is attached and the drop counters outlive the programs.
pub struct Maps {
    pub ring: RingBuf<MapData>,
    pub drops: PerCpuArray<MapData, u64>,
    /// LINEAGE, CONDEMNED and REFUSALS, for `act`.
    pub lineage: aya::maps::Map,
    pub condemned: aya::maps::Map,
    pub refusals: aya::maps::Map,
    /// BUDGETS, for `act` (the fork budgets of watched subtrees).
    pub budgets: aya::maps::Map,
    /// BLOCKED and REPORTED, for the blocked-task tracker.
    pub blocked: aya::maps::Map,
    pub reported: aya::maps::Map,
    /// SCOPE and SCOPE_CACHE, for `kernel_scope::ScopeMaps`.
    pub scope: aya::maps::Map,
    pub scope_cache: aya::maps::Map,
    /// PROTECTED_PIDS, for pids the fork probe must leave alone.
    pub protected_pids: aya::maps::Map,
    /// PROTECTED_EXES, for trusted executables found after start.
    pub protected_exes: aya::maps::Map,
}

/// What attaching did, for the `start` record and the logs.
#[derive(Debug, Default)]
pub struct AttachReport {
    pub attached: Vec<String>,
    /// (probe, why it was skipped).
    pub skipped: Vec<(String, String)>,
    /// The LSM program that refuses forks is attached.
    pub refusal: bool,
    /// Why not, when it was asked for and failed.
    pub refusal_failed: Option<String>,
}

/// Checks the capabilities loading needs, naming what is missing.
pub fn check_privileges() -> Result<()> {
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let cap_eff = crate::host::procfs::effective_capabilities()
        .context("no CapEff line in /proc/self/status")?;
    let has = |cap: u32| cap_eff & (1u64 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    let missing: Vec<&str> = [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
        .into_iter()
        .filter(|&(cap, _)| !has(cap))
        .map(|(_, name)| name)
        .collect();
    // SAFETY: geteuid cannot fail and touches no memory.
    let euid = unsafe { libc::geteuid() };
    let what_to_do = if euid == 0 {
        // Root without the capabilities: a container or a unit that drops
        // them. `sudo` would change nothing.
        "it runs as root but without them (a container or a service unit that drops \
         capabilities?): grant them, e.g. `--cap-add BPF --cap-add PERFMON` for a container or \
         `AmbientCapabilities=CAP_BPF CAP_PERFMON` in a unit"
    } else {
        "run it as root, e.g. `sudo guard`"
    };
    bail!(
        "guard needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN) to load its probes; this process \
         (uid {euid}) lacks {}: {what_to_do}",
        missing.join(" and ")
    )
}

/// Lifts RLIMIT_MEMLOCK: kernels before 5.11 charge BPF maps against it.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct we pass and nothing else.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        tracing::debug!(
            "could not lift RLIMIT_MEMLOCK: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Resolves the object's `bpf_send_signal_task` calls (see
/// [`guard_common::KFUNC_SIGNAL_TASK_CALL`]): the marker becomes the kfunc's
/// BTF id, or, on kernels without the kfunc (before 6.13), the instruction
/// becomes `r0 = 0`. Returns the patched object and whether the kfunc is
/// there. Instructions are 8-byte aligned in the object, so only aligned
/// matches count; there must be at least one.
pub fn resolve_kfunc_calls(object: &[u8], kfunc_id: Option<u32>) -> Result<Vec<u8>> {
    const MOV64_R0_IMM: [u8; 8] = [0xb7, 0, 0, 0, 0, 0, 0, 0];
    let mut patched = object.to_vec();
    let mut found = 0;
    for insn in patched.chunks_exact_mut(8) {
        if insn == guard_common::KFUNC_SIGNAL_TASK_CALL {
            found += 1;
            match kfunc_id {
                Some(id) => insn[4..].copy_from_slice(&id.to_le_bytes()),
                None => insn.copy_from_slice(&MOV64_R0_IMM),
            }
        }
    }
    if found == 0 {
        bail!("guard's eBPF object has no bpf_send_signal_task call to resolve: rebuild it");
    }
    Ok(patched)
}

/// Loads the object with this kernel's offsets and takes its maps.
pub fn load(opts: &LoadOptions) -> Result<(Loaded, Maps)> {
    check_privileges()?;
    let btf = Btf::from_file(&opts.btf)?;
    let needs_tracefs = PROBES
        .iter()
        .any(|p| matches!(p.hook, Hook::Classic { .. }) && opts.kinds.contains(&p.kind));
    let tracefs = if needs_tracefs {
        Some(crate::kernel::tracefs::ensure_mounted()?)
    } else {
        None
    };

    let probes: Vec<(&'static Probe, Option<String>)> = PROBES
        .iter()
        .filter(|p| p.always_attached || opts.kinds.contains(&p.kind))
        .map(|p| {
            (
                p,
                crate::kernel::probes::unsupported_reason(&btf, p, tracefs.as_deref()),
            )
        })
        .collect();
    let mut config: ProbeConfig =
        crate::kernel::probes::probe_config(&btf, tracefs.as_deref(), opts.memory)?;
    let scope = &opts.kernel_scope;
    if scope.hierarchy.is_some() {
        config.fork_guard = crate::kernel::probes::fork_guard_config(&btf, scope)?;
    }
    tracing::debug!(?config, "kernel offsets");

    let signal_task = btf.func_id("bpf_send_signal_task");
    if signal_task.is_none() {
        tracing::warn!(
            "this kernel has no bpf_send_signal_task (6.13+): a condemned subtree's member that \
             forks leaves its newborn child to guard's sweep instead of killing it at birth"
        );
    }
    let object = resolve_kfunc_calls(OBJECT, signal_task)?;

    raise_memlock_limit();
    let mut ebpf = EbpfLoader::new()
        .override_global("CONFIG", &config, true)
        .map_max_entries("EVENTS", opts.ring_buffer_bytes)
        .load(&object)
        .context("loading guard's eBPF object")?;
    fill_scope_maps(&mut ebpf, scope)?;
    let mut take = |name: &str| {
        ebpf.take_map(name)
            .with_context(|| format!("{name} map missing from the object"))
    };
    let ring = RingBuf::try_from(take("EVENTS")?)?;
    let drops = PerCpuArray::try_from(take("DROPS")?)?;
    let lineage = take("LINEAGE")?;
    let condemned = take("CONDEMNED")?;
    let refusals = take("REFUSALS")?;
    let budgets = take("BUDGETS")?;
    let blocked = take("BLOCKED")?;
    let reported = take("REPORTED")?;
    let scope_maps = (take("SCOPE")?, take("SCOPE_CACHE")?);
    let protected_pids = take("PROTECTED_PIDS")?;
    let protected_exes = take("PROTECTED_EXES")?;
    Ok((
        Loaded {
            ebpf,
            btf: Some(
                aya::Btf::parse_file(&opts.btf, aya::Endianness::default())
                    .with_context(|| format!("reading BTF from {}", opts.btf.display()))?,
            ),
            probes,
            refusal: opts.refusal,
        },
        Maps {
            ring,
            drops,
            lineage,
            condemned,
            refusals,
            budgets,
            blocked,
            reported,
            scope: scope_maps.0,
            scope_cache: scope_maps.1,
            protected_pids,
            protected_exes,
        },
    ))
}

/// Hands the fork probe its scope and what it must never tag or signal,
/// before any probe is attached.
fn fill_scope_maps(
    ebpf: &mut Ebpf,
    scope: &crate::respond::kernel_scope::KernelScope,
) -> Result<()> {
    fn map<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::maps::Map> {
        ebpf.map_mut(name)
            .with_context(|| format!("{name} map missing from the object"))
    }
    if scope.hierarchy.is_some() {
        let mut cgroups: HashMap<_, u64, u32> = HashMap::try_from(map(ebpf, "SCOPE")?)?;
        for (id, verdict) in scope.cgroup_ids()? {
            cgroups.insert(id, verdict, 0).context("filling SCOPE")?;
        }
    }
    let mut pids: HashMap<_, u32, u32> = HashMap::try_from(map(ebpf, "PROTECTED_PIDS")?)?;
    for &pid in &scope.protected_pids {
        pids.insert(pid, 1, 0).context("filling PROTECTED_PIDS")?;
    }
    let mut exes: HashMap<_, guard_common::ExeId, u32> =
        HashMap::try_from(map(ebpf, "PROTECTED_EXES")?)?;
    for exe in &scope.protected_exes {
        exes.insert(exe, 1, 0).context("filling PROTECTED_EXES")?;
    }
    Ok(())
}

impl Loaded {
    /// Loads and attaches every supported probe; one warning per skipped
    /// probe, an error only when a supported probe fails. Once only.
    pub fn attach(&mut self) -> Result<AttachReport> {
        let btf = self
            .btf
            .take()
            .context("guard's probes were already attached")?;
        let mut report = AttachReport::default();
        let mut loaded = BTreeSet::new();
        for (probe, unsupported) in &self.probes {
            let name = probe.describe();
            if let Some(reason) = unsupported {
                tracing::warn!("skipping {name} ({} events): {reason}", probe.kind.name());
                report.skipped.push((name, reason.clone()));
                continue;
            }
            let program = self
                .ebpf
                .program_mut(probe.program)
                .with_context(|| format!("program {} missing from the object", probe.program))?;
            let first_use = loaded.insert(probe.program);
            match probe.hook {
                Hook::Raw { tracepoint, .. } => {
                    let program: &mut RawTracePoint = program.try_into()?;
                    if first_use {
                        program
                            .load()
                            .with_context(|| format!("loading {}", probe.program))?;
                    }
                    program
                        .attach(tracepoint)
                        .with_context(|| format!("attaching {name}"))?;
                }
                Hook::Btf { tracepoint, .. } => {
                    let program: &mut BtfTracePoint = program.try_into()?;
                    if first_use {
                        program
                            .load(tracepoint, &btf)
                            .with_context(|| format!("loading {}", probe.program))?;
                    }
                    program
                        .attach()
                        .with_context(|| format!("attaching {name}"))?;
                }
                Hook::Classic { category, name: tp } => {
                    let program: &mut TracePoint = program.try_into()?;
                    if first_use {
                        program
                            .load()
                            .with_context(|| format!("loading {}", probe.program))?;
                    }
                    program
                        .attach(category, tp)
                        .with_context(|| format!("attaching {name}"))?;
                }
            }
            report.attached.push(name);
        }
        if self.refusal {
            // A kernel that lists bpf may still refuse the program (a
            // verifier of its own): then guard says so and goes on without.
            match self.attach_refusal(&btf) {
                Ok(()) => {
                    report.refusal = true;
                    report.attached.push("lsm/task_alloc".to_owned());
                }
                Err(e) => {
                    let why = format!("{e:#}");
                    tracing::warn!("the LSM program that refuses forks is not attached: {why}");
                    report.refusal_failed = Some(why);
                }
            }
        }
        Ok(report)
    }

    fn attach_refusal(&mut self, btf: &aya::Btf) -> Result<()> {
        let program: &mut Lsm = self
            .ebpf
            .program_mut("task_alloc")
            .context("program task_alloc missing from the object")?
            .try_into()?;
        program
            .load("task_alloc", btf)
            .context("loading task_alloc")?;
        program.attach().context("attaching lsm/task_alloc")?;
        Ok(())
    }
}
