//! tracefs: where it is mounted, and the record layout of classic
//! tracepoints from their `format` files.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use guard_common::{ABSENT, MarkVictimLayout};

pub const DEFAULT_MOUNT: &str = "/sys/kernel/tracing";

/// Finds tracefs in a mountinfo table (`/proc/self/mountinfo` text).
pub fn find_in_mountinfo(mountinfo: &str) -> Option<PathBuf> {
    let mut found = None;
    for line in mountinfo.lines() {
        // "36 35 0:10 / /sys/kernel/tracing rw,... - tracefs nodev rw"
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let fstype = right.split_whitespace().next();
        let mount_point = left.split_whitespace().nth(4);
        if let (Some("tracefs"), Some(mp)) = (fstype, mount_point) {
            let mp = PathBuf::from(mp);
            // Prefer the canonical place over the debugfs one.
            if mp == Path::new(DEFAULT_MOUNT) || found.is_none() {
                found = Some(mp);
            }
        }
    }
    found
}

/// Returns tracefs's mount point, mounting it at /sys/kernel/tracing when it
/// is not mounted anywhere (guard runs as root; this is what `perf` and
/// `bpftrace` users would do by hand).
pub fn ensure_mounted() -> Result<PathBuf> {
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    if let Some(mp) = find_in_mountinfo(&mountinfo) {
        return Ok(mp);
    }
    if let Err(err) = mount_pseudo_fs(c"nodev", c"tracefs", c"/sys/kernel/tracing") {
        bail!(
            "tracefs is not mounted and mounting it failed ({err}): run \
             mount -t tracefs nodev {DEFAULT_MOUNT}"
        );
    }
    tracing::info!("tracefs was not mounted: mounted it at {DEFAULT_MOUNT}");
    Ok(PathBuf::from(DEFAULT_MOUNT))
}

/// Mounts a kernel pseudo file system (tracefs, securityfs) at `target`.
pub fn mount_pseudo_fs(
    source: &std::ffi::CStr,
    fstype: &std::ffi::CStr,
    target: &std::ffi::CStr,
) -> std::io::Result<()> {
    // SAFETY: all pointers are valid NUL-terminated strings; mount(2) does
    // not keep them.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// One `field:` line of a tracepoint `format` file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    /// The declaration without the name, e.g. `__data_loc char[]`, `int`.
    pub ty: String,
    pub offset: u32,
    pub size: u32,
}

/// Parses the `field:` lines of a `format` file.
pub fn parse_format(text: &str) -> Result<Vec<Field>> {
    let mut fields = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("field:") else {
            continue;
        };
        let mut decl = None;
        let mut offset = None;
        let mut size = None;
        for (i, part) in rest.split(';').enumerate() {
            let part = part.trim();
            if i == 0 {
                decl = Some(part);
            } else if let Some(v) = part.strip_prefix("offset:") {
                offset = Some(
                    v.parse::<u32>()
                        .with_context(|| format!("bad offset in {line:?}"))?,
                );
            } else if let Some(v) = part.strip_prefix("size:") {
                size = Some(
                    v.parse::<u32>()
                        .with_context(|| format!("bad size in {line:?}"))?,
                );
            }
        }
        let (Some(decl), Some(offset), Some(size)) = (decl, offset, size) else {
            bail!("malformed field line {line:?}");
        };
        // "char comm[16]" → name "comm", type "char[16]"; "__data_loc char[] comm".
        let (ty, name) = decl
            .rsplit_once(' ')
            .with_context(|| format!("no field name in {line:?}"))?;
        let (name, array) = match name.split_once('[') {
            Some((name, dims)) => (name, format!("[{dims}")),
            None => (name, String::new()),
        };
        fields.push(Field {
            name: name.to_owned(),
            ty: format!("{}{array}", ty.trim()),
            offset,
            size,
        });
    }
    Ok(fields)
}

/// The `oom/mark_victim` layout of this kernel: the pid always, the rest
/// where the kernel has it (6.x added comm, rss, uid, pgtables and
/// oom_score_adj). A field whose size is not the one the program reads is
/// treated as absent rather than misread.
pub fn mark_victim_layout(fields: &[Field]) -> Result<MarkVictimLayout> {
    let find = |name: &str, size: u32| {
        fields
            .iter()
            .find(|f| f.name == name && f.size == size)
            .map_or(ABSENT, |f| f.offset)
    };
    let mut layout = MarkVictimLayout {
        pid: find("pid", 4),
        total_vm: find("total_vm", 8),
        anon_rss: find("anon_rss", 8),
        file_rss: find("file_rss", 8),
        shmem_rss: find("shmem_rss", 8),
        uid: find("uid", 4),
        pgtables: find("pgtables", 8),
        oom_score_adj: find("oom_score_adj", 2),
        ..MarkVictimLayout::NONE
    };
    if layout.pid == ABSENT {
        bail!("oom/mark_victim has no 4-byte pid field");
    }
    if let Some(comm) = fields.iter().find(|f| f.name == "comm") {
        if comm.ty.starts_with("__data_loc") {
            layout.comm = comm.offset;
            layout.comm_is_data_loc = 1;
        } else if comm.size == 16 {
            layout.comm = comm.offset;
        }
    }
    Ok(layout)
}

#[cfg(test)]
mod tests {
    use super::*;

    // As printed by this 6.18 kernel.
    const MARK_VICTIM_6_18: &str = "name: mark_victim
ID: 412
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:int pid;\toffset:8;\tsize:4;\tsigned:1;
\tfield:__data_loc char[] comm;\toffset:12;\tsize:4;\tsigned:0;
\tfield:unsigned long total_vm;\toffset:16;\tsize:8;\tsigned:0;
\tfield:unsigned long anon_rss;\toffset:24;\tsize:8;\tsigned:0;
\tfield:unsigned long file_rss;\toffset:32;\tsize:8;\tsigned:0;
\tfield:unsigned long shmem_rss;\toffset:40;\tsize:8;\tsigned:0;
\tfield:uid_t uid;\toffset:48;\tsize:4;\tsigned:0;
\tfield:unsigned long pgtables;\toffset:56;\tsize:8;\tsigned:0;
\tfield:short oom_score_adj;\toffset:64;\tsize:2;\tsigned:1;

print fmt: \"pid=%d\"
";

    // 5.x kernels: the pid only.
    const MARK_VICTIM_5_10: &str = "name: mark_victim
ID: 400
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:int pid;\toffset:8;\tsize:4;\tsigned:1;

print fmt: \"pid=%d\", REC->pid
";

    #[test]
    fn parses_data_loc_and_arrays() {
        let fields = parse_format(MARK_VICTIM_6_18).expect("parse");
        assert_eq!(fields.len(), 13);
        let comm = fields.iter().find(|f| f.name == "comm").expect("comm");
        assert_eq!(
            (comm.ty.as_str(), comm.offset, comm.size),
            ("__data_loc char[]", 12, 4)
        );
        let text = "\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;\n";
        let fields = parse_format(text).expect("parse");
        assert_eq!(
            fields,
            vec![Field {
                name: "comm".into(),
                ty: "char[16]".into(),
                offset: 8,
                size: 16
            }]
        );
    }

    #[test]
    fn mark_victim_layout_on_6_18() {
        let layout =
            mark_victim_layout(&parse_format(MARK_VICTIM_6_18).expect("parse")).expect("layout");
        assert_eq!(
            layout,
            MarkVictimLayout {
                pid: 8,
                comm: 12,
                comm_is_data_loc: 1,
                total_vm: 16,
                anon_rss: 24,
                file_rss: 32,
                shmem_rss: 40,
                uid: 48,
                pgtables: 56,
                oom_score_adj: 64,
            }
        );
    }

    #[test]
    fn mark_victim_layout_on_5_10_has_only_the_pid() {
        let layout =
            mark_victim_layout(&parse_format(MARK_VICTIM_5_10).expect("parse")).expect("layout");
        assert_eq!(
            layout,
            MarkVictimLayout {
                pid: 8,
                ..MarkVictimLayout::NONE
            }
        );
    }

    #[test]
    fn finds_tracefs_mounts() {
        let info = "24 30 0:22 / /sys rw - sysfs sysfs rw\n\
                    40 24 0:12 / /sys/kernel/debug/tracing rw - tracefs tracefs rw\n\
                    41 24 0:12 / /sys/kernel/tracing rw - tracefs nodev rw\n";
        assert_eq!(
            find_in_mountinfo(info),
            Some(PathBuf::from("/sys/kernel/tracing"))
        );
        assert_eq!(
            find_in_mountinfo("24 30 0:22 / /sys rw - sysfs sysfs rw\n"),
            None
        );
    }
}
