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
