//! guard's agent. Data flows one way: probes → ring buffer → decode →
//! process table → detectors → actions → output; `agent` wires it. The
//! folders are the layers, each depending only on those listed before it
//! (no import cycle between modules); each folder's `mod.rs` has its
//! one-line-per-module map. `tests/layers.rs` holds the code to this order.
//! The exceptions, and why:
//!
//! 1. `kernel::probes` and `kernel::loader` read `respond::kernel_scope`'s
//!    plan: what the fork probe enforces by itself is configuration they
//!    load into the kernel.
//! 2. `kernel::source` hands `detect::blocked::BlockedTask`s to the rule
//!    as it reads the kernel's blocked map.
//! 3. `kernel::decode` writes cgroup paths with `host::cgroup`'s lossless
//!    text, and `kernel::loader` reads its capabilities with
//!    `host::procfs`: one home each for those facts.
//! 4. `host::observe` returns the detectors' reading types (`MemUsage`,
//!    `Wait`), so that a reading needs no copy.
//!
//! Layers:
//!
//! - `kernel`: the kernel interface: BTF, tracefs, the probe table, the
//!   loader, decoding of ring-buffer records, the reader.
//! - `host`: the model of the host: clock, /proc, cgroups, pods, trusted
//!   executables, the process table and lineage, scope, readings (`Host`).
//! - `detect`: the pure rules (fork, memory, subtree, leak, crash loop,
//!   blocked tasks; switches and ignore lists): events, readings and a
//!   clock in, verdicts out.
//! - `respond`: policies, protection, the fork probe's own enforcement,
//!   containment (the only code that signals), hooks.
//! - `output`: the typed records and their generated schema, the text and
//!   NDJSON writers, Prometheus metrics.
//! - `pipeline`: the detectors' glue: per event and tick, routes to the
//!   detectors (`pipeline::plugin::Plugin`), writes their alerts and
//!   requests actions.
//! - `cli`: flags and their defaults, the config file, `guard check`.
//! - `agent`: loads, attaches, runs the loop, reports, detaches.
//! - `top`: `guard top`, the live view: a client of the agent's
//!   `--socket` stream (it starts an agent of its own as a process, never
//!   in-process).

pub mod agent;
pub mod cli;
pub mod detect;
pub mod host;
pub mod kernel;
pub mod output;
pub mod pipeline;
pub mod respond;
pub mod top;
