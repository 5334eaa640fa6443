//! Whether the kernel can refuse a lineage's forks: the BPF LSM built in
//! (`CONFIG_BPF_LSM=y`, seen in BTF as the `bpf_lsm_task_alloc` hook) and
//! active (`bpf` in the LSM list, `/sys/kernel/security/lsm`).
//!
//! Both matter. On a kernel built with the BPF LSM but booted without `bpf`
//! in its `lsm=` list, an LSM program loads and attaches without error and
//! is never called: refusal would silently be a no-op. So guard reads the
//! list, mounting securityfs when nobody has. And a kernel may list `bpf`
//! yet refuse LSM programs (a hardened or patched kernel, a sandbox: the
//! development VM's 6.18 answers EPERM to any program that attaches
//! through a BPF trampoline), so guard last loads a trivial LSM program
//! (aya's feature probe) and unloads it.

use std::path::Path;

use crate::kernel::btf::Btf;

const SECURITYFS: &str = "/sys/kernel/security";

/// Whether refusal is in force, and if not, why (for `guard check`, the
/// start record and the log).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct RefusalSupport {
    /// The LSM program is attached: a refused lineage's forks fail with
    /// EAGAIN.
    pub available: bool,
    /// Why not, and what to do about it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why_not: Option<String>,
    /// The active LSM list, when it could be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lsm: Option<String>,
}

impl RefusalSupport {
    pub fn unavailable(why: impl Into<String>) -> Self {
        Self {
            available: false,
            why_not: Some(why.into()),
            lsm: None,
        }
    }
}

/// Judges this kernel; `--no-lsm` (`disabled`) says no whatever it offers.
pub fn support(btf: &Btf, disabled: bool) -> RefusalSupport {
    if disabled {
        return RefusalSupport::unavailable("--no-lsm: guard does not attach its LSM program");
    }
    let listed = judge(btf.func_id("bpf_lsm_task_alloc").is_some(), active_lsms());
    if !listed.available {
        return listed;
    }
    let probe = aya::sys::is_program_supported(aya::programs::ProgramType::Lsm(
        aya::programs::LsmAttachType::Mac,
    ));
    let why_not = match probe {
        Ok(true) => return listed,
        Ok(false) => "bpf is listed but this kernel does not load LSM programs".to_owned(),
        Err(e) => format!(
            "bpf is listed but this kernel refuses LSM programs ({:#})",
            anyhow::Error::from(e)
        ),
    };
    RefusalSupport {
        available: false,
        why_not: Some(why_not),
        ..listed
    }
}

/// The decision, from what the kernel offers.
pub fn judge(built_in: bool, active: Result<String, String>) -> RefusalSupport {
    let active = active.map(|list| list.trim().to_owned());
    let lsm = active.as_ref().ok().cloned();
    let why_not = if !built_in {
        Some(
            "this kernel is built without the BPF LSM (CONFIG_BPF_LSM is not set): refusal \
             needs a kernel built with it"
                .to_owned(),
        )
    } else {
        match &active {
            Err(why) => Some(format!("the active LSM list cannot be read: {why}")),
            Ok(list) if list.split(',').any(|m| m == "bpf") => None,
            Ok(list) => Some(format!(
                "bpf is not in the active LSM list ({list}): boot with `lsm={list},bpf` on the \
                 kernel command line to enable refusal"
            )),
        }
    };
    RefusalSupport {
        available: why_not.is_none(),
        why_not,
        lsm,
    }
}

/// The active LSM list, mounting securityfs at its usual place when it is
/// not mounted anywhere.
fn active_lsms() -> Result<String, String> {
    let file = Path::new(SECURITYFS).join("lsm");
    if let Ok(list) = std::fs::read_to_string(&file) {
        return Ok(list);
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("reading /proc/self/mountinfo: {e}"))?;
    let mounted = mountinfo
        .lines()
        .filter_map(|l| l.split_once(" - "))
        .find(|(_, right)| right.starts_with("securityfs "))
        .and_then(|(left, _)| left.split(' ').nth(4).map(str::to_owned));
    let dir = match mounted {
        Some(dir) => dir,
        None => {
            if let Err(err) = crate::kernel::tracefs::mount_pseudo_fs(
                c"securityfs",
                c"securityfs",
                c"/sys/kernel/security",
            ) {
                return Err(format!(
                    "securityfs is not mounted and mounting it failed ({err}): run mount -t \
                     securityfs securityfs {SECURITYFS}"
                ));
            }
            tracing::info!("securityfs was not mounted: mounted it at {SECURITYFS}");
            SECURITYFS.to_owned()
        }
    };
    let file = Path::new(&dir).join("lsm");
    std::fs::read_to_string(&file).map_err(|e| format!("reading {}: {e}", file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_needs_the_bpf_lsm_built_in_and_active() {
        let on = judge(true, Ok("lockdown,capability,landlock,yama,bpf\n".into()));
        assert!(on.available, "{on:?}");
        assert_eq!(
            on.lsm.as_deref(),
            Some("lockdown,capability,landlock,yama,bpf")
        );

        let inactive = judge(true, Ok("lockdown,capability,apparmor".into()));
        assert!(!inactive.available);
        let why = inactive.why_not.expect("a reason");
        assert!(
            why.contains("lsm=lockdown,capability,apparmor,bpf"),
            "says what to boot with: {why}"
        );

        // A module named like it is not it.
        assert!(!judge(true, Ok("bpfilter,yama".into())).available);

        let not_built = judge(false, Ok("bpf".into()));
        assert!(!not_built.available);
        assert!(
            not_built
                .why_not
                .expect("a reason")
                .contains("CONFIG_BPF_LSM")
        );

        let unreadable = judge(true, Err("no securityfs".into()));
        assert!(!unreadable.available);
        assert!(
            unreadable
                .why_not
                .expect("a reason")
                .contains("no securityfs")
        );
    }
}
