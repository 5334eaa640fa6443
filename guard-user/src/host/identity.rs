//! What an ordinary user cannot forge: files only root can change, and
//! executables known by inode. One home for guard's trust rules:
//!
//! - [`check_root_owned`]: a file (a config, a hook's program, a trusted
//!   executable) is trusted only when it and every directory above it are
//!   owned by root and writable by no group or other user, as sshd's
//!   `StrictModes` judges `authorized_keys`.
//! - [`TrustedExes`]: the executables that make a process a service
//!   manager (or a `--protect`ed program), found by name only in
//!   [`TRUSTED_DIRS`] and by explicit path, each checked as above, and
//!   known by inode ([`ExeId`]) from then on. A process is judged by the
//!   inode of its executable as the kernel mapped it (`/proc/PID/exe`, or
//!   `mm->exe_file` in the fork probe), never by its comm or argv: a
//!   symlink named `sshd` to `/bin/bash` runs bash's inode.

use std::{
    collections::BTreeMap,
    os::unix::fs::{FileTypeExt as _, MetadataExt as _},
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

pub use guard_common::ExeId;

/// Directories searched for a service manager or a `--protect`ed name.
/// Each is used only when it passes [`check_root_owned`] on this host.
pub const TRUSTED_DIRS: &[&str] = &[
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/lib/systemd",
    "/lib/systemd",
    "/usr/libexec",
    "/usr/libexec/openssh",
    "/usr/lib/openssh",
];

/// Why `path` cannot be trusted, or `Ok` with its canonical path: it (after
/// resolving symlinks) and every directory above it must be owned by root
/// and not writable by group or others. `regular` asks for a regular file.
pub fn check_root_owned(path: &Path, regular: bool) -> Result<PathBuf, String> {
    let real = std::fs::canonicalize(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let meta = std::fs::metadata(&real).map_err(|e| format!("{}: {e}", real.display()))?;
    if regular && !meta.file_type().is_file() {
        return Err(format!("{} is not a regular file", real.display()));
    }
    owned_and_closed(&real, &meta)?;
    let mut dir = real.parent();
    while let Some(d) = dir {
        let meta = std::fs::metadata(d).map_err(|e| format!("{}: {e}", d.display()))?;
        owned_and_closed(d, &meta)?;
        dir = d.parent();
    }
    Ok(real)
}

fn owned_and_closed(path: &Path, meta: &std::fs::Metadata) -> Result<(), String> {
    if meta.uid() != 0 {
        return Err(format!(
            "{} is owned by uid {}, not root",
            path.display(),
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "{} is writable by {} (mode {:o})",
            path.display(),
            if meta.mode() & 0o002 != 0 {
                "anyone"
            } else {
                "its group"
            },
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// The executable of process `tgid` now, as the kernel mapped it; `None`
/// when it is gone, a kernel thread, or its exe cannot be read.
pub fn exe_of(tgid: u32) -> Option<ExeId> {
    let meta = std::fs::metadata(format!("/proc/{tgid}/exe")).ok()?;
    Some(ExeId::from_stat(meta.dev(), meta.ino()))
}

/// One trusted executable: the name it is trusted for and where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustedExe {
    pub name: String,
    pub path: PathBuf,
}

/// The executables whose processes are service managers or protected,
/// by inode. Shared (the agent's copies see one set) and refreshed: an
/// upgrade installs a new inode, and the old one may still run.
#[derive(Clone, Debug, Default)]
pub struct TrustedExes {
    inner: Arc<RwLock<BTreeMap<ExeId, TrustedExe>>>,
}

/// What a scan finds: the set, and the names no trusted executable has.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scan {
    pub found: BTreeMap<ExeId, TrustedExe>,
    pub missing: Vec<String>,
}

/// Finds, in the trusted directories under `root` (`/` but in tests), the
/// executables whose file name is one of `names` (compared as the kernel
/// cuts a comm, to 15 bytes: `containerd-shim-runc-v2` is
/// `containerd-shim`), and checks each `paths` entry.
pub fn scan(root: &Path, names: &[&str], paths: &[PathBuf]) -> Scan {
    let mut out = Scan::default();
    let comm = |n: &str| n.as_bytes()[..n.len().min(15)].to_vec();
    let wanted: Vec<Vec<u8>> = names.iter().map(|n| comm(n)).collect();
    let mut seen_names = vec![false; names.len()];
    let mut dirs_done = std::collections::HashSet::new();
    for dir in TRUSTED_DIRS {
        let dir = root.join(dir.trim_start_matches('/'));
        let Ok(real) = check_root_owned(&dir, false) else {
            continue;
        };
        if !dirs_done.insert(real.clone()) {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&real) else {
            continue;
        };
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let key = comm(&file_name.to_string_lossy());
            let Some(i) = wanted.iter().position(|w| *w == key) else {
                continue;
            };
            let path = real.join(&file_name);
            // A link's target must bear a wanted name too: `init` linked
            // to a multi-call busybox would make every busybox applet (a
            // shell running a bomb) a service manager. `/sbin/init` linked
            // to systemd is systemd.
            let target_wanted = |p: &Path| {
                p.file_name()
                    .is_some_and(|n| wanted.contains(&comm(&n.to_string_lossy())))
            };
            if let Some((id, path)) = trusted_file(&path).filter(|(_, p)| target_wanted(p)) {
                seen_names[i] = true;
                out.found.insert(
                    id,
                    TrustedExe {
                        name: names[i].to_owned(),
                        path,
                    },
                );
            }
        }
    }
    out.missing = names
        .iter()
        .zip(&seen_names)
        .filter(|(_, seen)| !**seen)
        .map(|(n, _)| (*n).to_owned())
        .collect();
    for path in paths {
        match trusted_file(path) {
            Some((id, real)) => {
                let name = real
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                out.found.insert(id, TrustedExe { name, path: real });
            }
            None => out.missing.push(path.display().to_string()),
        }
    }
    out
}

/// `path` as a trusted executable: a root-owned regular file, executable,
/// in root-owned directories.
fn trusted_file(path: &Path) -> Option<(ExeId, PathBuf)> {
    let real = check_root_owned(path, true).ok()?;
    let meta = std::fs::metadata(&real).ok()?;
    if meta.mode() & 0o111 == 0 || meta.file_type().is_fifo() {
        return None;
    }
    Some((ExeId::from_stat(meta.dev(), meta.ino()), real))
}

impl TrustedExes {
    pub fn new(found: BTreeMap<ExeId, TrustedExe>) -> Self {
        Self {
            inner: Arc::new(RwLock::new(found)),
        }
    }

    /// The trusted executable `id` is, if it is one.
    pub fn get(&self, id: &ExeId) -> Option<TrustedExe> {
        self.inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    /// Adds what a new scan found (an upgraded binary's new inode); the old
    /// inodes stay, as processes may still run them. Returns the new ones.
    pub fn extend(&self, found: BTreeMap<ExeId, TrustedExe>) -> Vec<ExeId> {
        let mut inner = self
            .inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut added = Vec::new();
        for (id, exe) in found {
            if inner.insert(id, exe).is_none() {
                added.push(id);
            }
        }
        added
    }

    pub fn ids(&self) -> Vec<ExeId> {
        self.inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .keys()
            .copied()
            .collect()
    }

    pub fn len(&self) -> usize {
        self.inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_in_a_world_writable_directory_is_not_trusted() {
        // /tmp is sticky and writable by anyone.
        let dir = tempdir();
        let file = dir.join("guard.toml");
        std::fs::write(&file, "").expect("write");
        let err = check_root_owned(&file, true).expect_err("under /tmp");
        let _ = std::fs::remove_dir_all(&dir);
        assert!(err.contains("writable by anyone"), "{err}");
    }

    #[test]
    fn system_binaries_are_trusted_and_found_by_name() {
        // This machine's /usr/bin/sleep is root's, as on any distribution.
        assert!(check_root_owned(Path::new("/usr/bin/sleep"), true).is_ok());
        let scan = scan(Path::new("/"), &["sleep", "no-such-program"], &[]);
        assert!(scan.found.values().any(|e| e.name == "sleep"), "{scan:?}");
        assert_eq!(scan.missing, vec!["no-such-program".to_owned()]);
        // The inode the kernel reports for a running sleep is the one found.
        let mut child = std::process::Command::new("/usr/bin/sleep")
            .arg("5")
            .spawn()
            .expect("sleep");
        let id = exe_of(child.id()).expect("exe");
        let _ = child.kill();
        let _ = child.wait();
        assert!(scan.found.contains_key(&id));
    }

    #[test]
    fn a_symlink_named_like_a_supervisor_is_the_file_it_points_to() {
        let dir = tempdir();
        let link = dir.join("sshd");
        std::os::unix::fs::symlink("/bin/sleep", &link).expect("symlink");
        // Searched by name, only trusted directories count: not found.
        let found = scan(&dir, &["sshd"], &[]);
        assert!(found.found.is_empty());
        // Named by path, it resolves to sleep, whose name it then carries.
        let by_path = scan(Path::new("/"), &[], &[link]);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(by_path.found.values().all(|e| e.name == "sleep"));
    }

    #[test]
    fn a_name_linked_to_a_multi_call_binary_is_not_trusted() {
        // Under /run, root's: trusted directories, as on a busybox system
        // whose /bin/init links to /bin/busybox.
        let root = Path::new("/run").join(format!("guard-identity-{}", std::process::id()));
        let bin = root.join("bin");
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&bin).expect("mkdir");
        std::fs::copy("/bin/true", bin.join("busybox")).expect("copy");
        std::fs::copy("/bin/true", bin.join("systemd")).expect("copy");
        std::os::unix::fs::symlink("busybox", bin.join("init")).expect("link");
        std::os::unix::fs::symlink("systemd", bin.join("sshd")).expect("link");
        let found = scan(&root, &["init", "systemd", "sshd"], &[]);
        let _ = std::fs::remove_dir_all(&root);
        let names: Vec<&str> = found.found.values().map(|e| e.name.as_str()).collect();
        // systemd is found (by itself or through the sshd link), busybox
        // never: no wanted name is its own.
        assert!(
            found.found.values().all(|e| e.path.ends_with("systemd")),
            "{found:?}"
        );
        assert!(!names.contains(&"init"), "{names:?}");
        assert!(found.missing.contains(&"init".to_owned()), "{found:?}");
    }

    fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "guard-identity-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        dir
    }
}
