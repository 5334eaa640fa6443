//! guard's agent, one module per stage of the flow:
//! kernel probes (`loader`, `probes`) → ring buffer (`source`) → `decode` →
//! process table (`proctable`, `cgroup`) → `output`. `agent` wires them.

pub mod act;
pub mod agent;
pub mod btf;
pub mod cgroup;
pub mod cli;
pub mod clock;
pub mod decode;
pub mod detect;
pub mod kernel_scope;
pub mod loader;
pub mod observe;
pub mod output;
pub mod pipeline;
pub mod probes;
pub mod proctable;
pub mod protect;
pub mod source;
pub mod tracefs;
