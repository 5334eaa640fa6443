//! The process probes: fork, exec, exit and cgroup moves.

use core::ffi::c_void;

use aya_ebpf::helpers::generated::bpf_probe_read_user;
use aya_ebpf::macros::{btf_tracepoint, raw_tracepoint};
use aya_ebpf::programs::{BtfTracePointContext, RawTracePointContext};
use guard_common::{
    ARGS_LEN, CgroupAttachEvent, EventKind, ExitEvent, ForkEvent, PATH_LEN, SCOPE_OUT,
};

use crate::{fork_guard::*, maps::*, read::*};

// sched_process_fork: fires in kernel_clone() once copy_process() has built
// the child (its pid, tgid, cgroups and comm are set) and before it first
// runs, in the parent's context. Raw tracepoint, TP_PROTO(struct task_struct
// *parent, struct task_struct *child), unchanged since 2.6.32: reading the
// tasks through BTF offsets keeps us off the record layout, which changed in
// 6.x (comm became `__data_loc char[]`) and never carried the child's tgid.
#[btf_tracepoint(function = "sched_process_fork")]
pub fn process_fork(ctx: BtfTracePointContext) -> u32 {
    match try_process_fork(&ctx) {
        Ok(ret) | Err(ret) => ret,
    }
}

pub(crate) fn try_process_fork(ctx: &BtfTracePointContext) -> Result<u32, u32> {
    let parent: *const u8 = ctx.arg(0);
    let child: *const u8 = ctx.arg(1);
    let (parent_pid, parent_tgid) = task_ids(parent)?;
    let (child_pid, child_tgid) = task_ids(child)?;
    let child_flags = read::<u32>(child, config!(task.flags))?;
    let ids = ForkIds {
        parent_pid,
        parent_tgid,
        child_pid,
        child_tgid,
        child_verdict: fork_verdict(child),
    };
    if let Some(signal) = enforce_lineage(parent, child, &ids, child_flags) {
        // The child `sched_process_fork` hands over, straight from the
        // context: a trusted pointer, as the kfunc requires.
        let child: *const c_void = ctx.arg(1);
        signal_task(child, signal);
    }
    // Born outside the scope (into the forker's cgroup, or another one with
    // CLONE_INTO_CGROUP): the agent follows it from its move in, if any.
    if config!(fork_guard.filter) == 1 && ids.child_verdict == SCOPE_OUT {
        return Ok(0);
    }
    let record = (|| -> Result<ForkEvent, u32> {
        let value = ForkEvent {
            header: header(EventKind::Fork),
            parent_pid,
            parent_tgid,
            child_pid,
            child_tgid,
            child_ppid: real_parent_tgid(child).unwrap_or(parent_tgid),
            child_flags,
            child_cgroup_id: task_cgroup_v2_id(child).unwrap_or(0),
            parent_comm: task_comm(parent)?,
            child_comm: task_comm(child)?,
        };
        Ok(value)
    })();
    emit(EventKind::Fork, record)
}

// sched_process_exec: fires in exec_binprm() after the new image is loaded
// and comm is updated, in the exec'ing task. Raw tracepoint, TP_PROTO(struct
// task_struct *p, pid_t old_pid, struct linux_binprm *bprm) since 3.4; the
// filename is bprm->filename, as the classic record's `filename` field.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn process_exec(ctx: RawTracePointContext) -> u32 {
    match try_process_exec(&ctx) {
        Ok(ret) | Err(ret) => ret,
    }
}

pub(crate) fn try_process_exec(ctx: &RawTracePointContext) -> Result<u32, u32> {
    let task: *const u8 = ctx.arg(0);
    let old_pid: u64 = ctx.arg(1);
    let bprm: *const u8 = ctx.arg(2);
    let kind = EventKind::Exec;
    let (pid, tgid) = task_ids(task).map_err(|e| read_failed(kind, e))?;
    let filename =
        read::<*const u8>(bprm, config!(task.binprm_filename)).map_err(|e| read_failed(kind, e))?;
    let comm = task_comm(task).map_err(|e| read_failed(kind, e))?;
    end_replication(task, tgid, &comm);
    if out_of_view(task) {
        return Ok(0);
    }
    // Built in this CPU's scratch slot: at 440 bytes the record does not
    // fit the 512-byte BPF stack beside the rest.
    let record = EXEC_SCRATCH.get_ptr_mut(0).ok_or(FAILED)?;
    // SAFETY: `record` is this CPU's slot of a per-CPU array, valid for the
    // whole run, and nothing else on this CPU runs meanwhile (the program
    // runs with migration disabled, and a nested run of the same program on
    // this CPU is refused by the kernel's recursion check).
    //
    // Not zeroed first: a 440-byte memset becomes a call to a BPF memset
    // function that 6.1's verifier refuses a map value for. Every field is
    // set; past `filename_len` and `args_len` the arrays may hold bytes of
    // this CPU's previous exec, which the agent never reads.
    unsafe {
        (*record).header = header(kind);
        (*record).pid = pid;
        (*record).tgid = tgid;
        (*record).old_pid = old_pid as u32;
        (*record).comm = comm;
        (*record).args_len = 0;
        (*record).args_cut = 0;
        (*record).filename_len = read_str::<PATH_LEN>(filename, &raw mut (*record).filename)
            .map_err(|e| read_failed(kind, e))?;
        // The arguments, from the new image's own memory: this runs in the
        // exec'ing task, whose mm is the new one by now. Unreadable
        // arguments leave `args_len` 0, not a lost record.
        if let Ok((start, end)) = arg_block(task) {
            let total = end.saturating_sub(start);
            let len = if total > ARGS_LEN as u64 {
                ARGS_LEN as u32
            } else {
                total as u32
            };
            if len > 0
                && len <= ARGS_LEN as u32
                && bpf_probe_read_user(
                    (&raw mut (*record).args).cast::<c_void>(),
                    len,
                    start as *const c_void,
                ) == 0
            {
                (*record).args_len = len;
                (*record).args_cut = (total - u64::from(len)) as u32;
            }
        }
        output(kind, &*record)
    }
}

/// `mm->arg_start` and `mm->arg_end` of `task`.
pub(crate) fn arg_block(task: *const u8) -> Result<(u64, u64), u32> {
    let mm = read::<*const u8>(task, config!(task.mm))?;
    Ok((
        read::<u64>(mm, config!(task.mm_arg_start))?,
        read::<u64>(mm, config!(task.mm_arg_end))?,
    ))
}

// sched_process_exit: fires in do_exit() after `tsk->exit_code = code` and
// before exit_notify(), in the exiting task. Raw tracepoint, TP_PROTO(struct
// task_struct *p) until 6.15; 6.16 added `bool group_dead`. Where the
// argument is missing (CONFIG.task.exit_has_group_dead == 0, resolved from
// BTF) we read signal->live, which do_exit() decremented just before.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn process_exit(ctx: RawTracePointContext) -> u32 {
    match try_process_exit(&ctx) {
        Ok(ret) | Err(ret) => ret,
    }
}

pub(crate) fn try_process_exit(ctx: &RawTracePointContext) -> Result<u32, u32> {
    let task: *const u8 = ctx.arg(0);
    let group_dead = if config!(task.exit_has_group_dead) != 0 {
        let arg: u64 = ctx.arg(1);
        arg & 0xff != 0
    } else {
        let signal = read::<*const u8>(task, config!(task.signal))?;
        read::<i32>(signal, config!(task.signal_live))? == 0
    };
    let (pid, tgid) = task_ids(task)?;
    // SAFETY: the value is copied out at once.
    let tag = (unsafe { LINEAGE.get(tgid) }).copied();
    if group_dead {
        let _ = RSS_STEP.remove(tgid);
    }
    // Only members of tagged subtrees have a budget and depths: every
    // other exit costs this one lookup.
    if let Some(tag) = tag {
        // The process's last task, or one thread of it: a task fewer.
        if !group_dead || LINEAGE.remove(tgid).is_ok() {
            count_exit(tag);
        }
        let _ = DEPTH.remove(pid);
        if group_dead && pid != tgid {
            let _ = DEPTH.remove(tgid);
        }
    }
    if out_of_view(task) {
        return Ok(0);
    }
    let record = (|| -> Result<ExitEvent, u32> {
        let value = ExitEvent {
            header: header(EventKind::Exit),
            pid,
            tgid,
            ppid: real_parent_tgid(task).unwrap_or(0),
            exit_code: read::<u32>(task, config!(task.exit_code))?,
            flags: read::<u32>(task, config!(task.flags))?,
            group_dead: group_dead as u32,
            comm: task_comm(task)?,
        };
        Ok(value)
    })();
    emit(EventKind::Exit, record)
}

// cgroup_attach_task / cgroup_transfer_tasks: fire once per task moved into
// another cgroup of one hierarchy (a write to cgroup.procs or tasks, or a v1
// cgroup_transfer_tasks), for v1 and v2 hierarchies alike. This is how the
// agent learns v1 membership, which the BPF cgroup-id helpers cannot see.
// Raw tracepoint, TP_PROTO(struct cgroup *dst_cgrp, const char *path, struct
// task_struct *task, bool threadgroup) since the path became an argument
// (TRACE_CGROUP_PATH, 5.0); the agent checks that prototype in BTF and skips
// the probe on kernels where it differs.
#[raw_tracepoint]
pub fn cgroup_attach_task(ctx: RawTracePointContext) -> u32 {
    match try_cgroup_attach_task(&ctx) {
        Ok(ret) | Err(ret) => ret,
    }
}

pub(crate) fn try_cgroup_attach_task(ctx: &RawTracePointContext) -> Result<u32, u32> {
    let cgroup: *const u8 = ctx.arg(0);
    let path: *const u8 = ctx.arg(1);
    let task: *const u8 = ctx.arg(2);
    // Built in place (the record is 288 bytes of a 512-byte stack).
    let kind = EventKind::CgroupAttach;
    let (pid, tgid) = task_ids(task).map_err(|e| read_failed(kind, e))?;
    let root =
        read::<*const u8>(cgroup, config!(task.cgroup_root)).map_err(|e| read_failed(kind, e))?;
    let hierarchy_id =
        read::<i32>(root, config!(task.root_hierarchy_id)).map_err(|e| read_failed(kind, e))?;
    let mut record = CgroupAttachEvent {
        header: header(kind),
        pid,
        tgid,
        hierarchy_id: hierarchy_id as u32,
        path_len: 0,
        ppid: real_parent_tgid(task).unwrap_or(0),
        flags: read::<u32>(task, config!(task.flags)).unwrap_or(0),
        start_ns: read::<u64>(task, config!(task.start_boottime)).unwrap_or(0),
        comm: task_comm(task).map_err(|e| read_failed(kind, e))?,
        path: [0; PATH_LEN],
    };
    record.path_len =
        read_str::<PATH_LEN>(path, &raw mut record.path).map_err(|e| read_failed(kind, e))?;
    output(kind, &record)
}
