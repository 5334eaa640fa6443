//! Builds guard-ebpf's `guard` program object for the BPF target (nightly,
//! `-Z build-std=core`, bpf-linker) into OUT_DIR, where `loader` embeds it.
//! `cargo xtask setup` installs what this needs.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "guard-ebpf")
        .ok_or_else(|| anyhow!("guard-ebpf package not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    let package = aya_build::Package {
        name: ebpf.name.as_str(),
        root_dir: root_dir.as_str(),
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default()).context(
        "building the eBPF programs failed; `cargo xtask setup` installs the nightly \
         rust-src component, LLVM 22 and bpf-linker they need",
    )
}
