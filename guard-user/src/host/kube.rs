//! Kubernetes pods and containers, read off cgroup paths: on a node,
//! kubelet puts every pod under `kubepods`, by QoS class, and the container
//! runtime puts each container under its pod. Records of a process there
//! name its pod's UID, its container's id and the QoS class.
//!
//! The two cgroup drivers lay the tree out differently:
//! - cgroupfs: `/kubepods[/burstable|/besteffort]/pod<uid>/<container>`,
//!   the container a bare 64-hex id (containerd, Docker) or `crio-<id>`;
//! - systemd: `/kubepods.slice[/kubepods-burstable.slice]/
//!   kubepods[-burstable]-pod<uid with _ for ->.slice/<runtime>-<id>.scope`,
//!   the runtime `cri-containerd`, `crio` or `docker`.
//!
//! A pod without `burstable` or `besteffort` in its path is `Guaranteed`.
//!
//! A pod's namespace and name are not in its cgroup's path. The node has
//! them anyway: kubelet keeps each pod's logs in
//! `/var/log/pods/<namespace>_<name>_<uid>` ([`PodNames`]). Neither part
//! can hold an underscore (Kubernetes validates both as DNS names), so the
//! directory's name splits one way only, and the UID, taken from the
//! cgroup (the kernel's view), is what binds a pod to its name. The
//! directory is believed only when root owns it and nobody else can write
//! it or any directory above it.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Mutex,
};

/// A pod's QoS class, as kubelet names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl Qos {
    pub fn name(self) -> &'static str {
        match self {
            Qos::Guaranteed => "Guaranteed",
            Qos::Burstable => "Burstable",
            Qos::BestEffort => "BestEffort",
        }
    }
}

/// Where in Kubernetes a cgroup is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub uid: String,
    /// The container's id (64 hex digits); `None` in the pod's own cgroup
    /// (its sandbox's processes) or in a runtime's helper (conmon).
    pub container_id: Option<String>,
    pub qos: Qos,
}

/// A pod's namespace and name, as its log directory gives them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodName {
    pub namespace: String,
    pub name: String,
}

/// The default of `--pod-logs`: where kubelet keeps pods' logs.
pub const POD_LOGS: &str = "/var/log/pods";

/// How often a lookup that misses may read the directory again (a pod
/// made since the last read), in nanoseconds of the caller's clock.
const RESCAN_NS: u64 = 1_000_000_000;

/// Pods' names by UID, read from kubelet's log directory on demand: a UID
/// not known yet reads the directory again, at most once a second.
#[derive(Debug)]
pub struct PodNames {
    dir: Option<PathBuf>,
    /// Believe the directory only if root's alone (off in unit tests,
    /// whose directories are under /tmp).
    check_owner: bool,
    state: Mutex<Scanned>,
}

#[derive(Debug, Default)]
struct Scanned {
    names: HashMap<String, PodName>,
    at_ns: Option<u64>,
    /// Why the directory is not believed, once said.
    refused: Option<String>,
}

impl PodNames {
    /// Names from `dir` (`None`: no names, e.g. `--pod-logs ''`).
    pub fn new(dir: Option<PathBuf>) -> Self {
        Self {
            dir,
            check_owner: true,
            state: Mutex::new(Scanned::default()),
        }
    }

    /// No directory: every lookup misses.
    pub fn none() -> Self {
        Self::new(None)
    }

    /// These names and no directory (for tests of what uses them).
    pub fn known(names: impl IntoIterator<Item = (String, PodName)>) -> Self {
        Self {
            dir: None,
            check_owner: true,
            state: Mutex::new(Scanned {
                names: names.into_iter().collect(),
                ..Scanned::default()
            }),
        }
    }

    /// Learns a pod's name as a read of the directory would (for tests of
    /// a pod named after it was first seen).
    #[cfg(test)]
    pub fn learn(&self, uid: &str, name: PodName) {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .names
            .insert(uid.to_owned(), name);
    }

    /// The name of the pod `uid` at `now_ns` (any monotonic clock).
    pub fn lookup(&self, uid: &str, now_ns: u64) -> Option<PodName> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(found) = state.names.get(uid) {
            return Some(found.clone());
        }
        let dir = self.dir.as_deref()?;
        if state
            .at_ns
            .is_some_and(|at| now_ns.saturating_sub(at) < RESCAN_NS)
        {
            return None;
        }
        state.at_ns = Some(now_ns);
        match scan(dir, self.check_owner) {
            Ok(names) => {
                state.names = names;
                state.refused = None;
            }
            Err(why) => {
                if state.refused.as_ref() != Some(&why) {
                    tracing::warn!("pod names: {why}; records name pods by UID only");
                }
                state.names.clear();
                state.refused = Some(why);
            }
        }
        state.names.get(uid).cloned()
    }
}

impl Default for PodNames {
    fn default() -> Self {
        Self::none()
    }
}

/// Every pod's name under `dir`, if `dir` is root's alone.
fn scan(dir: &Path, check_owner: bool) -> Result<HashMap<String, PodName>, String> {
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(format!("{}: {e}", dir.display())),
        Ok(_) => {}
    }
    if check_owner {
        crate::host::identity::check_root_owned(dir, false)?;
    }
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(entries
        .flatten()
        .filter_map(|e| parse_log_dir(e.file_name().to_str()?))
        .collect())
}

/// `<namespace>_<name>_<uid>` as (uid, name).
fn parse_log_dir(entry: &str) -> Option<(String, PodName)> {
    let mut parts = entry.split('_');
    let (namespace, name, uid) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || namespace.is_empty() || name.is_empty() {
        return None;
    }
    let dns = |s: &str| {
        s.len() <= 253
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    };
    if !dns(namespace) || !dns(name) || pod_uid(uid).as_deref() != Some(uid) {
        return None;
    }
    Some((
        uid.to_owned(),
        PodName {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        },
    ))
}

/// The pod of a cgroup path (a directory under a mount, or a path inside
/// a hierarchy), if it is one's.
pub fn pod_of(path: &str) -> Option<Pod> {
    // Most paths are not a pod's: one substring search decides.
    let at = path.find("kubepods")?;
    let mut qos = Qos::Guaranteed;
    let mut uid = None;
    let mut container_id = None;
    for part in path[at..].split('/') {
        let name = part.strip_suffix(".slice").unwrap_or(part);
        if uid.is_none() {
            if name.contains("burstable") {
                qos = Qos::Burstable;
            } else if name.contains("besteffort") {
                qos = Qos::BestEffort;
            }
            // `pod<uid>` (cgroupfs) or `kubepods[-qos]-pod<uid>` (systemd).
            if let Some(i) = name.rfind("pod")
                && (i == 0 || name[..i].ends_with('-'))
                && let Some(found) = pod_uid(&name[i + 3..])
            {
                uid = Some(found);
            }
            continue;
        }
        if container_id.is_none() {
            container_id = container_of(part);
        }
    }
    Some(Pod {
        uid: uid?,
        container_id,
        qos,
    })
}

/// A pod UID: 36 characters of hex and dashes (systemd slices write the
/// dashes as underscores).
fn pod_uid(text: &str) -> Option<String> {
    let uid = text.replace('_', "-");
    let ok = uid.len() == 36
        && uid.chars().enumerate().all(|(i, c)| {
            matches!(i, 8 | 13 | 18 | 23) == (c == '-') && (c == '-' || c.is_ascii_hexdigit())
        });
    ok.then_some(uid)
}

/// A container's id from its cgroup's name: a bare 64-hex id, or
/// `<runtime>-<id>[.scope]`. A runtime's helper (`crio-conmon-<id>`) is no
/// container.
fn container_of(name: &str) -> Option<String> {
    let name = name.strip_suffix(".scope").unwrap_or(name);
    if name.contains("conmon") {
        return None;
    }
    let id = name.rsplit('-').next()?;
    (id.len() == 64 && id.chars().all(|c| c.is_ascii_hexdigit())).then(|| id.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "8f3c5d1e-2b4a-4c6d-9e8f-0a1b2c3d4e5f";
    const CID: &str = "3b5a7c9d1e2f4a6b8c0d2e4f6a8b0c2d4e6f8a0b2c4d6e8f0a2b4c6d8e0f2a4b";

    fn pod(container: Option<&str>, qos: Qos) -> Option<Pod> {
        Some(Pod {
            uid: UID.into(),
            container_id: container.map(str::to_owned),
            qos,
        })
    }

    #[test]
    fn cgroupfs_driver_containerd_and_docker() {
        assert_eq!(
            pod_of(&format!("/sys/fs/cgroup/kubepods/burstable/pod{UID}/{CID}")),
            pod(Some(CID), Qos::Burstable)
        );
        assert_eq!(
            pod_of(&format!("/sys/fs/cgroup/pids/kubepods/pod{UID}/{CID}")),
            pod(Some(CID), Qos::Guaranteed)
        );
        assert_eq!(
            pod_of(&format!("/kubepods/besteffort/pod{UID}")),
            pod(None, Qos::BestEffort)
        );
    }

    #[test]
    fn cgroupfs_driver_cri_o() {
        assert_eq!(
            pod_of(&format!("/kubepods/burstable/pod{UID}/crio-{CID}")),
            pod(Some(CID), Qos::Burstable)
        );
    }

    #[test]
    fn systemd_driver_each_runtime() {
        let u = UID.replace('-', "_");
        for runtime in ["cri-containerd", "crio", "docker"] {
            assert_eq!(
                pod_of(&format!(
                    "/sys/fs/cgroup/kubepods.slice/kubepods-burstable.slice/\
                     kubepods-burstable-pod{u}.slice/{runtime}-{CID}.scope"
                )),
                pod(Some(CID), Qos::Burstable),
                "{runtime}"
            );
        }
        assert_eq!(
            pod_of(&format!(
                "/kubepods.slice/kubepods-pod{u}.slice/cri-containerd-{CID}.scope"
            )),
            pod(Some(CID), Qos::Guaranteed)
        );
        assert_eq!(
            pod_of(&format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/\
                 crio-conmon-{CID}.scope"
            )),
            pod(None, Qos::BestEffort),
            "conmon is no container"
        );
    }

    #[test]
    fn log_directories_name_pods_by_uid() {
        assert_eq!(
            parse_log_dir(&format!("team-a_web-7c9f-x2x_{UID}")),
            Some((
                UID.into(),
                PodName {
                    namespace: "team-a".into(),
                    name: "web-7c9f-x2x".into()
                }
            ))
        );
        for bad in [
            format!("team-a_web_{}", UID.replace('-', "_")),
            format!("a_b_c_{UID}"),
            format!("Team_web_{UID}"),
            format!("_web_{UID}"),
            "team-a_web_not-a-uid".into(),
        ] {
            assert_eq!(parse_log_dir(&bad), None, "{bad}");
        }
    }

    #[test]
    fn names_are_read_again_on_a_miss_at_most_once_a_second() {
        let dir = std::env::temp_dir().join(format!("guard-pods-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let mut names = PodNames::new(Some(dir.clone()));
        names.check_owner = false;
        assert_eq!(names.lookup(UID, 0), None);
        std::fs::create_dir(dir.join(format!("ns_pod_{UID}"))).expect("mkdir");
        assert_eq!(names.lookup(UID, 500_000_000), None, "read again too soon");
        let found = names
            .lookup(UID, 1_000_000_000)
            .map(|n| (n.namespace, n.name));
        assert_eq!(found, Some(("ns".into(), "pod".into())));
        std::fs::remove_dir(dir.join(format!("ns_pod_{UID}"))).expect("rmdir");
        assert!(
            names.lookup(UID, 1_000_000_001).is_some(),
            "known names stay"
        );

        // The same directory, believed only if root's alone: it is under
        // /tmp, which anyone can write.
        std::fs::create_dir(dir.join(format!("ns_pod_{UID}"))).expect("mkdir");
        let checked = PodNames::new(Some(dir.clone()));
        assert_eq!(checked.lookup(UID, 0), None, "under /tmp: not root's alone");
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(PodNames::none().lookup(UID, 0), None);
    }

    #[test]
    fn other_paths_are_no_pod() {
        for path in [
            "/sys/fs/cgroup/system.slice/kubelet.service",
            "/sys/fs/cgroup/kubepods.slice",
            "/sys/fs/cgroup/kubepods.slice/kubepods-burstable.slice",
            "/kubepods/burstable/podnot-a-uid/x",
            "/user.slice/user-1000.slice/session-3.scope",
        ] {
            assert_eq!(pod_of(path), None, "{path}");
        }
    }
}
