//! cgroup hierarchies on this host (v1, v2, or both), and where a process
//! sits in each.
//!
//! A process has one cgroup per hierarchy. guard names a cgroup by its
//! directory (e.g. `/sys/fs/cgroup/pids/build`), the same form `--cgroup`
//! takes, so the path an event shows can be pasted back as a filter.
//!
//! Which hierarchy an event's `cgroup` field shows (the *primary* one):
//! 1. the hierarchy of the first `--cgroup` path, when one is given;
//! 2. otherwise, on a pure v2 host, the v2 hierarchy;
//! 3. otherwise (v1 or hybrid), the v1 `pids` hierarchy, then `memory`, then
//!    the v2 hierarchy, then whatever is mounted first.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context as _, Result, bail};

/// One mounted cgroup hierarchy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hierarchy {
    /// The hierarchy id of /proc/PID/cgroup's first column (0 for v2).
    pub id: u32,
    /// Controllers (or `name=`), comma-separated, as /proc/PID/cgroup lists
    /// them; empty for v2.
    pub controllers: String,
    /// Where it is mounted.
    pub mount: PathBuf,
    /// The cgroup path that the mount shows at its top (`/` unless it is a
    /// bind mount of a sub-tree, as in containers).
    pub mount_root: String,
}

impl Hierarchy {
    pub fn is_v2(&self) -> bool {
        self.id == 0
    }

    fn has_controller(&self, name: &str) -> bool {
        self.controllers.split(',').any(|c| c == name)
    }

    /// The directory of cgroup `path` (as /proc/PID/cgroup prints it).
    pub fn dir_of(&self, path: &str) -> String {
        let rel = path.strip_prefix(self.mount_root.as_str()).unwrap_or(path);
        let rel = rel.trim_start_matches('/');
        let mount = self.mount.to_string_lossy();
        if rel.is_empty() {
            mount.into_owned()
        } else {
            format!("{}/{rel}", mount.trim_end_matches('/'))
        }
    }
}

/// The hierarchies of this host, and which one events show.
#[derive(Clone, Debug)]
pub struct Hierarchies {
    pub list: Vec<Hierarchy>,
    pub primary: usize,
}

/// Cgroup paths are kept as `str`, but a cgroup's name can hold any byte
/// (a delegated subtree is named by its user): each byte that is not UTF-8
/// is kept as the private-use character U+10FF00 + byte, so that nothing is
/// lost. [`path_bytes`] and [`fs_path`] give the real path back for the
/// file system; output writes such a name lossily with a `_hex` twin
/// (JSON, metrics) or escaped as `\xNN` (text).
pub fn path_text(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for &b in chunk.invalid() {
            out.push(raw_char(b));
        }
    }
    out
}

const RAW_BASE: u32 = 0x10_FF00;

fn raw_char(b: u8) -> char {
    char::from_u32(RAW_BASE + u32::from(b)).unwrap_or(char::REPLACEMENT_CHARACTER)
}

/// The byte a character of [`path_text`] stands for, when it stands for one.
pub fn raw_byte(c: char) -> Option<u8> {
    u32::from(c)
        .checked_sub(RAW_BASE)
        .and_then(|b| u8::try_from(b).ok())
}

/// Whether `text` holds bytes that are not UTF-8 (see [`path_text`]).
/// Every string of every JSON event passes here: the characters it looks
/// for all start with the byte 0xF4, which a plain name never holds.
pub fn has_raw(text: &str) -> bool {
    text.as_bytes().contains(&0xF4) && text.chars().any(|c| raw_byte(c).is_some())
}

/// The real bytes of a [`path_text`] string.
pub fn path_bytes(text: &str) -> Vec<u8> {
    if !has_raw(text) {
        return text.as_bytes().to_vec();
    }
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        match raw_byte(c) {
            Some(b) => out.push(b),
            None => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
    out
}

/// A [`path_text`] string as the path it names on the file system.
pub fn fs_path(text: &str) -> std::path::PathBuf {
    use std::os::unix::ffi::OsStringExt as _;
    std::ffi::OsString::from_vec(path_bytes(text)).into()
}

/// `text` for a reader: each byte that is not UTF-8 as U+FFFD.
pub fn lossy(text: &str) -> std::borrow::Cow<'_, str> {
    if !has_raw(text) {
        return text.into();
    }
    text.chars()
        .map(|c| {
            if raw_byte(c).is_some() {
                char::REPLACEMENT_CHARACTER
            } else {
                c
            }
        })
        .collect::<String>()
        .into()
}

/// /proc/PID/cgroup (or any file of paths), losslessly (see [`path_text`]).
pub fn read_paths(path: &std::path::Path) -> std::io::Result<String> {
    std::fs::read(path).map(|b| path_text(&b))
}

/// A process's cgroup directory in each hierarchy (index = position in
/// [`Hierarchies::list`]); shared between parent and child until one moves.
pub type CgroupSet = Arc<[Option<Arc<str>>]>;

impl Hierarchies {
    /// Reads this host's hierarchies from /proc/self/mountinfo and
    /// /proc/self/cgroup.
    pub fn discover() -> Result<Self> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .context("reading /proc/self/mountinfo")?;
        let own = read_paths(std::path::Path::new("/proc/self/cgroup"))
            .context("reading /proc/self/cgroup")?;
        Self::parse(&mountinfo, &own)
    }

    /// Builds the table from mountinfo text and a /proc/PID/cgroup text.
    pub fn parse(mountinfo: &str, proc_cgroup: &str) -> Result<Self> {
        let mut list: Vec<Hierarchy> = Vec::new();
        for line in proc_cgroup.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(id), Some(controllers), Some(_path)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let Ok(id) = id.parse::<u32>() else { continue };
            let Some((mount, mount_root)) = find_mount(mountinfo, id, controllers) else {
                continue;
            };
            if list.iter().all(|h| h.id != id) {
                list.push(Hierarchy {
                    id,
                    controllers: controllers.to_owned(),
                    mount,
                    mount_root,
                });
            }
        }
        if list.is_empty() {
            bail!(
                "no cgroup hierarchy is mounted (looked for cgroup and cgroup2 in /proc/self/mountinfo)"
            );
        }
        list.sort_by_key(|h| h.id);
        let primary = default_primary(&list);
        Ok(Hierarchies { list, primary })
    }

    /// A pure v2 host: no v1 hierarchy with controllers.
    /// Every cgroup directory of every hierarchy now (at most `limit`, in
    /// no particular order), as paths; names that are not UTF-8 are left
    /// out.
    pub fn directories(&self, limit: usize) -> Vec<String> {
        let mut found = Vec::new();
        let mut stack: Vec<PathBuf> = self.list.iter().map(|h| h.mount.clone()).collect();
        while let Some(dir) = stack.pop() {
            if found.len() >= limit {
                break;
            }
            let Some(text) = dir.to_str() else { continue };
            found.push(text.to_owned());
            if let Ok(entries) = std::fs::read_dir(&dir) {
                stack.extend(
                    entries
                        .filter_map(|e| e.ok())
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path()),
                );
            }
        }
        found
    }

    pub fn is_pure_v2(&self) -> bool {
        pure_v2(&self.list)
    }

    pub fn primary(&self) -> &Hierarchy {
        &self.list[self.primary]
    }

    /// The hierarchy where task limits live: v1 `pids`, else v2, else the
    /// primary one.
    pub fn pids_index(&self) -> usize {
        self.index_of_controller("pids")
            .or_else(|| self.index_of_id(0))
            .unwrap_or(self.primary)
    }

    pub fn index_of_id(&self, id: u32) -> Option<usize> {
        self.list.iter().position(|h| h.id == id)
    }

    pub fn index_of_controller(&self, controller: &str) -> Option<usize> {
        self.list.iter().position(|h| h.has_controller(controller))
    }

    /// Resolves a user-given cgroup directory (any hierarchy) to its
    /// hierarchy index and canonical directory.
    pub fn resolve_dir(&self, dir: &Path) -> Result<(usize, String)> {
        let canonical = dir
            .canonicalize()
            .with_context(|| format!("cgroup directory {} does not exist", dir.display()))?;
        if !canonical.join("cgroup.procs").exists() {
            bail!(
                "{} is not a cgroup directory (it has no cgroup.procs); {}",
                dir.display(),
                self.describe()
            );
        }
        let best = self
            .list
            .iter()
            .enumerate()
            .filter(|(_, h)| canonical.starts_with(&h.mount))
            .max_by_key(|(_, h)| h.mount.as_os_str().len())
            .with_context(|| {
                format!(
                    "{} is in no cgroup hierarchy guard knows; {}",
                    dir.display(),
                    self.describe()
                )
            })?;
        Ok((
            best.0,
            path_text(std::os::unix::ffi::OsStrExt::as_bytes(
                canonical.as_os_str(),
            )),
        ))
    }

    /// "cgroup hierarchies here: /sys/fs/cgroup/pids (pids), ...".
    pub fn describe(&self) -> String {
        let names: Vec<String> = self
            .list
            .iter()
            .map(|h| {
                let what = if h.is_v2() {
                    "v2"
                } else {
                    h.controllers.as_str()
                };
                format!("{} ({what})", h.mount.display())
            })
            .collect();
        format!("cgroup hierarchies here: {}", names.join(", "))
    }

    /// Parses a /proc/PID/cgroup text into a set of directories.
    pub fn set_from_proc(&self, text: &str, interner: &mut Interner) -> CgroupSet {
        let mut set: Vec<Option<Arc<str>>> = vec![None; self.list.len()];
        for line in text.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(id), Some(_), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            let Some(index) = id.parse::<u32>().ok().and_then(|id| self.index_of_id(id)) else {
                continue;
            };
            set[index] = Some(interner.intern(&self.list[index].dir_of(path)));
        }
        set.into()
    }
}

/// No v1 hierarchy with controllers (named ones, like name=systemd, hold none).
fn pure_v2(list: &[Hierarchy]) -> bool {
    list.iter()
        .all(|h| h.is_v2() || h.controllers.starts_with("name="))
}

fn default_primary(list: &[Hierarchy]) -> usize {
    let by = |pred: &dyn Fn(&Hierarchy) -> bool| list.iter().position(pred);
    if pure_v2(list) {
        return by(&|h| h.is_v2()).unwrap_or(0);
    }
    by(&|h| h.has_controller("pids"))
        .or_else(|| by(&|h| h.has_controller("memory")))
        .or_else(|| by(&|h| h.is_v2()))
        .unwrap_or(0)
}

/// The mount point and mount root of hierarchy `id` with `controllers`.
fn find_mount(mountinfo: &str, id: u32, controllers: &str) -> Option<(PathBuf, String)> {
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let left: Vec<&str> = left.split_whitespace().collect();
        let right: Vec<&str> = right.split_whitespace().collect();
        let (Some(root), Some(mount), Some(fstype), Some(opts)) =
            (left.get(3), left.get(4), right.first(), right.get(2))
        else {
            continue;
        };
        let matches = if id == 0 {
            *fstype == "cgroup2"
        } else {
            *fstype == "cgroup"
                && controllers
                    .split(',')
                    .all(|c| opts.split(',').any(|o| o == c))
        };
        if matches {
            return Some((
                PathBuf::from(unescape_mountinfo(mount)),
                unescape_mountinfo(root),
            ));
        }
    }
    None
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mountinfo(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Whether directory `dir` is `scope` or below it.
pub fn is_within(dir: &str, scope: &str) -> bool {
    dir == scope || (dir.starts_with(scope) && dir.as_bytes().get(scope.len()) == Some(&b'/'))
}

/// Shares one allocation per distinct cgroup directory.
#[derive(Default)]
pub struct Interner(HashMap<Box<str>, Arc<str>>);

impl Interner {
    pub fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.0.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        self.0.insert(s.into(), a.clone());
        a
    }
}

#[cfg(test)]
mod raw_tests {
    use super::*;

    #[test]
    fn names_that_are_not_utf8_survive_the_round_trip() {
        let raw = b"/sys/fs/cgroup/pids/job-\xff\xfe-\xc3(";
        let text = path_text(raw);
        assert!(has_raw(&text));
        assert_eq!(path_bytes(&text), raw);
        assert_eq!(
            lossy(&text),
            "/sys/fs/cgroup/pids/job-\u{fffd}\u{fffd}-\u{fffd}("
        );
        assert_eq!(path_text(b"/plain/caf\xc3\xa9"), "/plain/café");
        assert!(!has_raw("/plain/café"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // This machine: v1 controllers plus an empty v2 hierarchy (hybrid).
    const HYBRID_MOUNTINFO: &str = "\
30 24 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
32 30 0:28 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
33 30 0:29 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
34 30 0:30 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
35 30 0:31 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
";
    const HYBRID_CGROUP: &str = "\
9:name=systemd:/
8:pids:/build
4:memory:/process_api/abc
2:cpu,cpuacct:/
0::/
";

    // A pure v2 host (systemd, cgroupns at the root).
    const V2_MOUNTINFO: &str = "\
25 21 0:22 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";
    const V2_CGROUP: &str = "0::/system.slice/nginx.service\n";

    // A container: the v2 hierarchy bind-mounted from a sub-tree.
    const CONTAINER_MOUNTINFO: &str = "\
700 690 0:22 /kubepods/pod1/c1 /sys/fs/cgroup ro,nosuid - cgroup2 cgroup2 rw
";

    #[test]
    fn hybrid_host_shows_the_pids_hierarchy() {
        let h = Hierarchies::parse(HYBRID_MOUNTINFO, HYBRID_CGROUP).expect("parse");
        assert_eq!(
            h.list.iter().map(|h| h.id).collect::<Vec<_>>(),
            vec![0, 2, 4, 8, 9]
        );
        assert!(!h.is_pure_v2());
        assert_eq!(h.primary().mount, PathBuf::from("/sys/fs/cgroup/pids"));
        let mut interner = Interner::default();
        let set = h.set_from_proc(HYBRID_CGROUP, &mut interner);
        let pids = h.index_of_controller("pids").expect("pids");
        let memory = h.index_of_controller("memory").expect("memory");
        assert_eq!(set[pids].as_deref(), Some("/sys/fs/cgroup/pids/build"));
        assert_eq!(
            set[memory].as_deref(),
            Some("/sys/fs/cgroup/memory/process_api/abc")
        );
        assert_eq!(
            set[h.index_of_id(0).expect("v2")].as_deref(),
            Some("/sys/fs/cgroup/unified")
        );
        assert_eq!(
            h.list[h.index_of_id(2).expect("cpu")].mount,
            PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")
        );
    }

    #[test]
    fn pure_v2_host_shows_the_v2_hierarchy() {
        let h = Hierarchies::parse(V2_MOUNTINFO, V2_CGROUP).expect("parse");
        assert!(h.is_pure_v2());
        assert_eq!(h.list.len(), 1);
        assert_eq!(h.primary().mount, PathBuf::from("/sys/fs/cgroup"));
        let mut interner = Interner::default();
        let set = h.set_from_proc(V2_CGROUP, &mut interner);
        assert_eq!(
            set[0].as_deref(),
            Some("/sys/fs/cgroup/system.slice/nginx.service")
        );
        assert_eq!(
            h.set_from_proc("0::/\n", &mut interner)[0].as_deref(),
            Some("/sys/fs/cgroup")
        );
    }

    #[test]
    fn container_mount_root_is_stripped() {
        let h =
            Hierarchies::parse(CONTAINER_MOUNTINFO, "0::/kubepods/pod1/c1/app\n").expect("parse");
        assert_eq!(
            h.list[0].dir_of("/kubepods/pod1/c1/app"),
            "/sys/fs/cgroup/app"
        );
        assert_eq!(h.list[0].dir_of("/kubepods/pod1/c1"), "/sys/fs/cgroup");
    }

    #[test]
    fn no_cgroup_mounts_is_an_error() {
        assert!(Hierarchies::parse("24 30 0:22 / /sys rw - sysfs sysfs rw\n", "0::/\n").is_err());
    }

    #[test]
    fn within_is_by_path_component() {
        assert!(is_within("/sys/fs/cgroup/pids/a", "/sys/fs/cgroup/pids/a"));
        assert!(is_within(
            "/sys/fs/cgroup/pids/a/b",
            "/sys/fs/cgroup/pids/a"
        ));
        assert!(!is_within(
            "/sys/fs/cgroup/pids/ab",
            "/sys/fs/cgroup/pids/a"
        ));
        assert!(!is_within("/sys/fs/cgroup/pids", "/sys/fs/cgroup/pids/a"));
    }

    #[test]
    fn escaped_mount_points() {
        assert_eq!(unescape_mountinfo("/mnt/my\\040cgroups"), "/mnt/my cgroups");
    }
}
