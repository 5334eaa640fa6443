//! The kernel interface: what the agent knows of the running kernel, the
//! eBPF programs it loads, and the records they write.
//!
//! - `btf`: reads kernel BTF (struct offsets, function and enum ids).
//! - `tracefs`: finds and mounts tracefs, parses tracepoint formats.
//! - `probes`: the per-kernel probe table and the `CONFIG` the programs read.
//! - `lsm`: whether the BPF LSM can refuse forks here (built in, active).
//! - `loader`: loads the eBPF object, fills its maps, attaches probes.
//! - `decode`: ring-buffer records to typed events (`TryFrom` on the kind).
//! - `source`: reads the ring buffer into the agent's queue; counts losses.

pub mod btf;
pub mod decode;
pub mod loader;
pub mod lsm;
pub mod probes;
pub mod source;
pub mod tracefs;
