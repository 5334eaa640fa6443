//! guard's agent. Data flows one way: probes → ring buffer → decode →
//! process table → detectors → actions → output; `agent` wires it. There is
//! no import cycle. Modules depend on those listed before them, with two
//! known exceptions: `probes` and `loader` read `kernel_scope`'s plan (what
//! the fork probe enforces is configuration they load), and `observe`
//! returns the detectors' reading types. One line each:
//!
//! Kernel interface
//! - `btf`: reads kernel BTF (struct offsets, function and enum ids).
//! - `tracefs`: finds and mounts tracefs, parses tracepoint formats.
//! - `probes`: the per-kernel probe table and the `CONFIG` the programs read.
//! - `loader`: loads the eBPF object, fills its maps, attaches probes.
//! - `decode`: ring-buffer records to typed events (`TryFrom` on the kind).
//! - `source`: reads the ring buffer into the agent's queue; counts losses.
//!
//! Model of the host
//! - `clock`: CLOCK_BOOTTIME and its wall-clock mapping.
//! - `cgroup`: hierarchies (v1, v2, hybrid) and per-process membership.
//! - `proctable`: live processes and their fork-time lineage (with ghosts).
//! - `procfs`: /proc/PID/stat, parsed in one place, and the clock tick.
//! - `observe`: readings of /proc and cgroup files (pids, memory, PSI).
//! - `scope`: which processes `--cgroup` covers.
//! - `kube`: Kubernetes pods, containers and QoS classes from cgroup paths.
//!
//! Detectors (pure: events, readings and a clock in; verdicts out)
//! - `detect`: fork, memory, subtree, leak, crash-loop and blocked rules,
//!   and the switches and ignore lists.
//!
//! Response
//! - `policy`: what a verdict leads to (log, stop, kill) and its signal.
//! - `protect`: what is never signalled.
//! - `kernel_scope`: what the fork probe enforces by itself, and its scope.
//! - `act`: containment; the only module that signals other processes.
//! - `hook`: `--on-alert`, the operator's command run per alert and action.
//!
//! Output and wiring
//! - `output`: records as text or NDJSON, escaping, the stdout writer.
//! - `metrics`: Prometheus metrics from the agent's snapshots, over HTTP.
//! - `pipeline`: per event and tick, routes to detectors and requests actions.
//! - `cli`: flags, their ranges and defaults.
//! - `config`: the TOML config file: flags by their names, and policies.
//! - `check`: `guard check`, the host's facts and what they turn on or off.
//! - `agent`: loads, attaches, runs the loop, reports, detaches.

pub mod act;
pub mod agent;
pub mod btf;
pub mod cgroup;
pub mod check;
pub mod cli;
pub mod clock;
pub mod config;
pub mod decode;
pub mod detect;
pub mod hook;
pub mod identity;
pub mod kernel_scope;
pub mod kube;
pub mod loader;
pub mod metrics;
pub mod observe;
pub mod output;
pub mod pipeline;
pub mod policy;
pub mod probes;
pub mod procfs;
pub mod proctable;
pub mod protect;
pub mod scope;
pub mod source;
pub mod tracefs;
