//! The OOM killer's victim (`oom:mark_victim`).

use aya_ebpf::EbpfContext as _;
use aya_ebpf::helpers::bpf_get_current_pid_tgid;
use aya_ebpf::macros::tracepoint;
use aya_ebpf::programs::TracePointContext;
use guard_common::{ABSENT, COMM_LEN, EventKind, OomKillEvent, oom_field};

use crate::read::*;

// oom/mark_victim: fires when the OOM killer has chosen a victim, in the
// context of the task whose allocation failed, before SIGKILL is sent. A
// classic tracepoint on purpose: its record carries the rss figures the
// kernel computed for the decision (total_vm, anon/file/shmem rss, pgtables,
// oom_score_adj: added in 6.x; older kernels give only the pid, and the
// raw arguments changed from `int pid` to the task and its uid). Offsets come
// from the tracepoint's tracefs `format` file; absent fields stay absent.
#[tracepoint(category = "oom", name = "mark_victim")]
pub fn mark_victim(ctx: TracePointContext) -> u32 {
    match try_mark_victim(&ctx) {
        Ok(ret) | Err(ret) => ret,
    }
}

pub(crate) fn try_mark_victim(ctx: &TracePointContext) -> Result<u32, u32> {
    let record = ctx.as_ptr().cast::<u8>().cast_const();
    let record = (|| -> Result<OomKillEvent, u32> {
        let mut present = 0;
        let mut field = |offset: u32, bit: u32| -> u64 {
            match read::<u64>(record, offset) {
                Ok(value) => {
                    present |= bit;
                    value
                }
                Err(_) => 0,
            }
        };
        let total_vm_kb = field(config!(mark_victim.total_vm), oom_field::TOTAL_VM);
        let anon_rss_kb = field(config!(mark_victim.anon_rss), oom_field::ANON_RSS);
        let file_rss_kb = field(config!(mark_victim.file_rss), oom_field::FILE_RSS);
        let shmem_rss_kb = field(config!(mark_victim.shmem_rss), oom_field::SHMEM_RSS);
        let pgtables_kb = field(config!(mark_victim.pgtables), oom_field::PGTABLES);
        let uid = match read::<u32>(record, config!(mark_victim.uid)) {
            Ok(uid) => {
                present |= oom_field::UID;
                uid
            }
            Err(_) => 0,
        };
        let oom_score_adj = match read::<i16>(record, config!(mark_victim.oom_score_adj)) {
            Ok(adj) => {
                present |= oom_field::OOM_SCORE_ADJ;
                i32::from(adj)
            }
            Err(_) => 0,
        };
        let mut comm = [0u8; COMM_LEN];
        let comm_offset = config!(mark_victim.comm);
        if comm_offset != ABSENT {
            // `__data_loc char[]`: a u32 whose low half is the string's offset
            // in the record; otherwise an inline char[16].
            let at = if config!(mark_victim.comm_is_data_loc) != 0 {
                read::<u32>(record, comm_offset).map(|loc| loc & 0xffff)
            } else {
                Ok(comm_offset)
            };
            if let Ok(at) = at
                && read_str::<COMM_LEN>(record.wrapping_add(at as usize), &raw mut comm).is_ok()
            {
                present |= oom_field::COMM;
            }
        }
        let trigger = bpf_get_current_pid_tgid();
        let value = OomKillEvent {
            header: header(EventKind::OomKill),
            pid: read::<u32>(record, config!(mark_victim.pid))?,
            uid,
            trigger_pid: trigger as u32,
            trigger_tgid: (trigger >> 32) as u32,
            total_vm_kb,
            anon_rss_kb,
            file_rss_kb,
            shmem_rss_kb,
            pgtables_kb,
            oom_score_adj,
            present,
            comm,
        };
        Ok(value)
    })();
    emit(EventKind::OomKill, record)
}
