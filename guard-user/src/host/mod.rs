//! The model of the host: processes, their lineage and cgroups, and the
//! readings of /proc and cgroup files that events do not carry.
//!
//! - `clock`: CLOCK_BOOTTIME and its wall-clock mapping.
//! - `procfs`: /proc/PID/stat and /proc/PID/status, parsed in one place,
//!   and the clock tick.
//! - `cgroup`: hierarchies (v1, v2, hybrid) and per-process membership.
//! - `kube`: Kubernetes pods, containers and QoS classes from cgroup paths.
//! - `identity`: root-owned files and trusted executables, by inode.
//! - `proctable`: live processes and their fork-time lineage (with ghosts).
//! - `scope`: which processes `--cgroup` covers.
//! - `observe`: readings of /proc and cgroup files (pids, memory, PSI),
//!   behind the `Host` trait the detectors' glue reads through.

pub mod cgroup;
pub mod clock;
pub mod identity;
pub mod kube;
pub mod observe;
pub mod procfs;
pub mod proctable;
pub mod scope;
