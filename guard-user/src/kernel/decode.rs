//! Ring-buffer records → typed events. Pure: no I/O, no process table.

use std::fmt;

use guard_common::{
    COMM_LEN, CgroupAttachEvent, CondemnedEvent, EventKind, ExecEvent, ExitEvent, ForkEvent,
    Header, HungTaskEvent, OomKillEvent, PF_KTHREAD, ReclaimStallEvent, RssEvent, UnblockedEvent,
    auto_tag_root, oom_field, task_state,
};

/// A task's comm: at most 15 bytes, kept inline (no allocation per event).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Comm([u8; COMM_LEN]);

impl Comm {
    pub fn new(raw: [u8; COMM_LEN]) -> Self {
        let mut c = Comm(raw);
        // Clear whatever follows the NUL so equal names compare equal.
        if let Some(nul) = raw.iter().position(|&b| b == 0) {
            c.0[nul..].fill(0);
        }
        c
    }

    pub fn from_str_lossy(s: &str) -> Self {
        let mut raw = [0u8; COMM_LEN];
        let n = s.len().min(COMM_LEN - 1);
        raw[..n].copy_from_slice(&s.as_bytes()[..n]);
        Comm(raw)
    }

    pub fn as_bytes(&self) -> &[u8] {
        let len = self.0.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
        &self.0[..len]
    }
}

impl fmt::Display for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&String::from_utf8_lossy(self.as_bytes()))
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_bytes()))
    }
}

/// How a task ended, from `task_struct.exit_code` (wait(2) status layout).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(i32),
    Signaled { signal: i32, core_dumped: bool },
}

impl ExitStatus {
    pub fn from_raw(raw: u32) -> Self {
        let signal = (raw & 0x7f) as i32;
        if signal == 0 {
            ExitStatus::Exited(((raw >> 8) & 0xff) as i32)
        } else {
            ExitStatus::Signaled {
                signal,
                core_dumped: raw & 0x80 != 0,
            }
        }
    }

    /// A non-zero exit code or a fatal signal.
    pub fn is_failure(self) -> bool {
        self != ExitStatus::Exited(0)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fork {
    pub boot_ns: u64,
    pub parent_pid: u32,
    pub parent_tgid: u32,
    pub child_pid: u32,
    pub child_tgid: u32,
    /// The child's real parent process (differs from `parent_tgid` with
    /// CLONE_PARENT).
    pub child_ppid: u32,
    pub kernel_thread: bool,
    pub child_cgroup_id: u64,
    pub parent_comm: Comm,
    pub child_comm: Comm,
}

impl Fork {
    /// A new thread of the same process, not a new process.
    pub fn is_thread(&self) -> bool {
        self.child_tgid == self.parent_tgid
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exec {
    pub boot_ns: u64,
    pub pid: u32,
    pub tgid: u32,
    pub old_pid: u32,
    pub comm: Comm,
    /// The path exec'd, byte for byte (any byte but NUL).
    pub filename: Box<[u8]>,
    pub filename_truncated: bool,
    /// The arguments (`None`: unreadable at exec). When
    /// `cmdline_truncated`, the last one is cut.
    pub cmdline: Option<Args>,
    /// The argument block was longer than the record carries.
    pub cmdline_truncated: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exit {
    pub boot_ns: u64,
    pub pid: u32,
    pub tgid: u32,
    pub ppid: u32,
    pub status: ExitStatus,
    pub group_dead: bool,
    pub kernel_thread: bool,
    pub comm: Comm,
}

impl Exit {
    /// A thread other than the last one ending: the process lives on.
    pub fn is_thread_exit(&self) -> bool {
        !self.group_dead
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OomKill {
    pub boot_ns: u64,
    pub pid: u32,
    pub comm: Option<Comm>,
    pub uid: Option<u32>,
    pub trigger_pid: u32,
    pub trigger_tgid: u32,
    pub total_vm_kb: Option<u64>,
    pub anon_rss_kb: Option<u64>,
    pub file_rss_kb: Option<u64>,
    pub shmem_rss_kb: Option<u64>,
    pub pgtables_kb: Option<u64>,
    pub oom_score_adj: Option<i32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HungTask {
    pub boot_ns: u64,
    pub pid: u32,
    pub tgid: u32,
    pub comm: Comm,
}

/// A task guard reported as blocked ran again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unblocked {
    pub boot_ns: u64,
    pub pid: u32,
    pub tgid: u32,
    /// TASK_KILLABLE: the wait could have been ended by a fatal signal.
    pub killable: bool,
    pub since_ns: u64,
    pub blocked_ns: u64,
    pub comm: Comm,
}

/// A process's resident memory crossed a step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rss {
    pub boot_ns: u64,
    pub pid: u32,
    pub tgid: u32,
    pub step: u32,
    /// `None`: the first step seen for this process.
    pub previous_step: Option<u32>,
    pub file_bytes: u64,
    pub anon_bytes: u64,
    pub shmem_bytes: u64,
    pub swap_bytes: u64,
    pub comm: Comm,
}

impl Rss {
    /// Resident bytes: file + anon + shmem.
    pub fn rss_bytes(&self) -> u64 {
        self.file_bytes + self.anon_bytes + self.shmem_bytes
    }

    /// What reclaim cannot take back without swap: anon + shmem.
    pub fn unreclaimable_bytes(&self) -> u64 {
        self.anon_bytes + self.shmem_bytes
    }
}

/// A task stalled in memory reclaim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReclaimStall {
    pub boot_ns: u64,
    pub pid: u32,
    pub tgid: u32,
    pub stall_ns: u64,
    pub nr_reclaimed: u64,
    pub comm: Comm,
}

/// The fork probe condemned a subtree (its births met the explosion rule).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condemned {
    pub boot_ns: u64,
    pub tag: u64,
    /// The subtree's root, when the probe tagged it by itself.
    pub root_tgid: Option<u32>,
    pub births: u64,
    pub growth: u64,
    pub window_ns: u64,
    pub forker_tgid: u32,
    pub signal: i32,
    /// Births of the window at least `--fork-depth` deep.
    pub deep_births: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupAttach {
    pub boot_ns: u64,
    pub pid: u32,
    pub tgid: u32,
    /// The mover's parent process, name, whether it is a kernel thread,
    /// and start (boot ns, 0: unknown).
    pub ppid: u32,
    pub comm: Comm,
    pub kernel_thread: bool,
    pub start_ns: u64,
    pub hierarchy_id: u32,
    /// Path inside the hierarchy, e.g. `/a/b`.
    pub path: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Fork(Fork),
    Exec(Exec),
    Exit(Exit),
    OomKill(OomKill),
    HungTask(HungTask),
    CgroupAttach(CgroupAttach),
    Unblocked(Unblocked),
    Rss(Rss),
    ReclaimStall(ReclaimStall),
    Condemned(Condemned),
}

impl Event {
    pub fn kind(&self) -> EventKind {
        match self {
            Event::Fork(_) => EventKind::Fork,
            Event::Exec(_) => EventKind::Exec,
            Event::Exit(_) => EventKind::Exit,
            Event::OomKill(_) => EventKind::OomKill,
            Event::HungTask(_) => EventKind::HungTask,
            Event::CgroupAttach(_) => EventKind::CgroupAttach,
            Event::Unblocked(_) => EventKind::Unblocked,
            Event::Rss(_) => EventKind::Rss,
            Event::ReclaimStall(_) => EventKind::ReclaimStall,
            Event::Condemned(_) => EventKind::Condemned,
        }
    }

    pub fn boot_ns(&self) -> u64 {
        match self {
            Event::Fork(e) => e.boot_ns,
            Event::Exec(e) => e.boot_ns,
            Event::Exit(e) => e.boot_ns,
            Event::OomKill(e) => e.boot_ns,
            Event::HungTask(e) => e.boot_ns,
            Event::CgroupAttach(e) => e.boot_ns,
            Event::Unblocked(e) => e.boot_ns,
            Event::Rss(e) => e.boot_ns,
            Event::ReclaimStall(e) => e.boot_ns,
            Event::Condemned(e) => e.boot_ns,
        }
    }

    /// A thread-level event (a thread created, or a non-last thread ending)
    /// rather than a process-level one.
    pub fn is_thread_level(&self) -> bool {
        match self {
            Event::Fork(f) => f.is_thread(),
            Event::Exit(e) => e.is_thread_exit(),
            _ => false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than the header, or than its kind's struct.
    Short {
        len: usize,
        need: usize,
    },
    UnknownKind(u32),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Short { len, need } => write!(f, "record of {len} bytes, need {need}"),
            DecodeError::UnknownKind(k) => write!(f, "unknown record kind {k}"),
        }
    }
}

/// Marker for the `#[repr(C)]` wire structs, all of whose bit patterns are
/// valid values (integers and byte arrays only).
trait Wire: Copy {}
impl Wire for Header {}
impl Wire for ForkEvent {}
impl Wire for ExecEvent {}
impl Wire for ExitEvent {}
impl Wire for OomKillEvent {}
impl Wire for HungTaskEvent {}
impl Wire for CgroupAttachEvent {}
impl Wire for UnblockedEvent {}
impl Wire for RssEvent {}
impl Wire for CondemnedEvent {}
impl Wire for ReclaimStallEvent {}

fn read<T: Wire>(bytes: &[u8]) -> Result<T, DecodeError> {
    let need = size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::Short {
            len: bytes.len(),
            need,
        });
    }
    // SAFETY: the length was checked above, `read_unaligned` has no alignment
    // requirement, and every bit pattern is a valid `T` (see `Wire`).
    Ok(unsafe { bytes.as_ptr().cast::<T>().read_unaligned() })
}

fn string(bytes: &[u8], len: u32) -> (Box<[u8]>, bool) {
    let len = (len as usize).min(bytes.len());
    (bytes[..len].into(), len >= bytes.len() - 1)
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    let header: Header = read(bytes)?;
    let kind = EventKind::try_from(header.kind).map_err(|e| DecodeError::UnknownKind(e.0))?;
    let boot_ns = header.boot_ns;
    Ok(match kind {
        EventKind::Fork => {
            let r: ForkEvent = read(bytes)?;
            Event::Fork(Fork {
                boot_ns,
                parent_pid: r.parent_pid,
                parent_tgid: r.parent_tgid,
                child_pid: r.child_pid,
                child_tgid: r.child_tgid,
                child_ppid: r.child_ppid,
                kernel_thread: r.child_flags & PF_KTHREAD != 0,
                child_cgroup_id: r.child_cgroup_id,
                parent_comm: Comm::new(r.parent_comm),
                child_comm: Comm::new(r.child_comm),
            })
        }
        EventKind::Exec => {
            let r: ExecEvent = read(bytes)?;
            let (filename, filename_truncated) = string(&r.filename, r.filename_len);
            Event::Exec(Exec {
                boot_ns,
                pid: r.pid,
                tgid: r.tgid,
                old_pid: r.old_pid,
                comm: Comm::new(r.comm),
                filename,
                filename_truncated,
                cmdline: cmdline(&r.args, r.args_len),
                cmdline_truncated: r.args_cut > 0,
            })
        }
        EventKind::Exit => {
            let r: ExitEvent = read(bytes)?;
            Event::Exit(Exit {
                boot_ns,
                pid: r.pid,
                tgid: r.tgid,
                ppid: r.ppid,
                status: ExitStatus::from_raw(r.exit_code),
                group_dead: r.group_dead != 0,
                kernel_thread: r.flags & PF_KTHREAD != 0,
                comm: Comm::new(r.comm),
            })
        }
        EventKind::OomKill => {
            let r: OomKillEvent = read(bytes)?;
            let has = |bit: u32| r.present & bit != 0;
            Event::OomKill(OomKill {
                boot_ns,
                pid: r.pid,
                comm: has(oom_field::COMM).then(|| Comm::new(r.comm)),
                uid: has(oom_field::UID).then_some(r.uid),
                trigger_pid: r.trigger_pid,
                trigger_tgid: r.trigger_tgid,
                total_vm_kb: has(oom_field::TOTAL_VM).then_some(r.total_vm_kb),
                anon_rss_kb: has(oom_field::ANON_RSS).then_some(r.anon_rss_kb),
                file_rss_kb: has(oom_field::FILE_RSS).then_some(r.file_rss_kb),
                shmem_rss_kb: has(oom_field::SHMEM_RSS).then_some(r.shmem_rss_kb),
                pgtables_kb: has(oom_field::PGTABLES).then_some(r.pgtables_kb),
                oom_score_adj: has(oom_field::OOM_SCORE_ADJ).then_some(r.oom_score_adj),
            })
        }
        EventKind::HungTask => {
            let r: HungTaskEvent = read(bytes)?;
            Event::HungTask(HungTask {
                boot_ns,
                pid: r.pid,
                tgid: r.tgid,
                comm: Comm::new(r.comm),
            })
        }
        EventKind::CgroupAttach => {
            let r: CgroupAttachEvent = read(bytes)?;
            let (path, _) = string(&r.path, r.path_len);
            // Kept losslessly: a delegated cgroup is named by its user.
            let path = crate::host::cgroup::path_text(&path);
            Event::CgroupAttach(CgroupAttach {
                boot_ns,
                pid: r.pid,
                tgid: r.tgid,
                ppid: r.ppid,
                comm: Comm::new(r.comm),
                kernel_thread: r.flags & guard_common::PF_KTHREAD != 0,
                start_ns: r.start_ns,
                hierarchy_id: r.hierarchy_id,
                path,
            })
        }
        EventKind::Unblocked => {
            let r: UnblockedEvent = read(bytes)?;
            Event::Unblocked(Unblocked {
                boot_ns,
                pid: r.pid,
                tgid: r.tgid,
                killable: r.state & task_state::WAKEKILL != 0,
                since_ns: r.since_ns,
                blocked_ns: r.blocked_ns,
                comm: Comm::new(r.comm),
            })
        }
        EventKind::Rss => {
            let r: RssEvent = read(bytes)?;
            Event::Rss(Rss {
                boot_ns,
                pid: r.pid,
                tgid: r.tgid,
                step: r.step,
                previous_step: (r.previous_step != u32::MAX).then_some(r.previous_step),
                file_bytes: r.file_bytes,
                anon_bytes: r.anon_bytes,
                shmem_bytes: r.shmem_bytes,
                swap_bytes: r.swap_bytes,
                comm: Comm::new(r.comm),
            })
        }
        EventKind::ReclaimStall => {
            let r: ReclaimStallEvent = read(bytes)?;
            Event::ReclaimStall(ReclaimStall {
                boot_ns,
                pid: r.pid,
                tgid: r.tgid,
                stall_ns: r.stall_ns,
                nr_reclaimed: r.nr_reclaimed,
                comm: Comm::new(r.comm),
            })
        }
        EventKind::Condemned => {
            let r: CondemnedEvent = read(bytes)?;
            Event::Condemned(Condemned {
                boot_ns,
                tag: r.tag,
                root_tgid: auto_tag_root(r.tag),
                births: r.births,
                growth: r.growth,
                window_ns: r.window_ns,
                forker_tgid: r.forker_tgid,
                signal: i32::try_from(r.signal).unwrap_or(i32::MAX),
                deep_births: r.deep_births,
            })
        }
    })
}

/// An argument block as the kernel lays it out (each argument ended by a
/// NUL), kept in one allocation of its exact size: an event waiting in the
/// agent's queue costs at most its 128 bytes, however many arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Args(Box<[u8]>);

impl Args {
    /// The arguments, byte for byte, empty ones included.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.0.split(|&b| b == 0)
    }

    /// Builds one from arguments (tests).
    pub fn of(args: &[&[u8]]) -> Self {
        Args(args.join(&0u8).into())
    }
}

/// The argument block of an exec record (`None`: none was read).
fn cmdline(args: &[u8], len: u32) -> Option<Args> {
    let bytes = args.get(..len as usize)?;
    if bytes.is_empty() {
        return None;
    }
    Some(Args(bytes.strip_suffix(&[0]).unwrap_or(bytes).into()))
}

#[cfg(test)]
pub(crate) mod tests;
