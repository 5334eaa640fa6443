//! `cargo xtask setup|build|run|test|bench`: everything around the build that
//! cargo alone cannot do. Every command that needs the toolchain runs
//! `setup` first; `setup` only installs what is missing.

use std::{
    ffi::OsString,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail, ensure};
use clap::{Parser, Subcommand};

mod bench;
mod package;
mod precision;
mod vm;

#[derive(Parser)]
#[command(about = "Build, run, test and benchmark guard")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building guard needs and is missing: the nightly
    /// toolchain's rust-src, Debian's LLVM 22, bpf-linker 0.13 built against
    /// it, and the tools the integration tests drive.
    Setup,
    /// Set up, then build the agent (release) and the test workloads.
    Build,
    /// Set up, build, and start the agent as root; arguments after `--` go to
    /// it (`cargo xtask run -- --json`).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Set up, build, check formatting and clippy (host crates and the eBPF
    /// crate), then run every test: unit tests, the root integration tests
    /// against this kernel, one at a time, the Debian package (built by
    /// `dist`, installed with dpkg, its guard run, purged), and then the VM
    /// tests (`vm-test`: Debian's 6.1 and 6.12 kernels in qemu).
    Test {
        /// Only integration tests whose name contains this (the VM tests are
        /// then skipped).
        filter: Option<String>,
        /// Skip the VM tests (about 5 minutes).
        #[arg(long)]
        no_vm: bool,
    },
    /// Set up, build, and measure the agent's cost and detection figures.
    Bench {
        /// Rounds of each measurement.
        #[arg(long, default_value_t = 5)]
        rounds: u32,
        /// Only this benchmark: cost, fork-rate, fork-bomb, bombs, refusal (in a
        /// VM guest), ctx-switch, blocked-storm, memory or precision.
        #[arg(long)]
        only: Option<String>,
    },
    /// Write schema/guard.schema.json and docs/schema-fields.md from the
    /// record types (`guard schema`). A unit test fails while either is
    /// not what the types give, so `cargo xtask test` catches drift.
    Schema,
    /// Set up and build the static agent (musl, the eBPF object embedded,
    /// stripped) into target/dist/, with its SHA-256, shell completions
    /// (bash, zsh, fish), man page, and a Debian package of them with the
    /// unit and the example config (guard_VERSION-1_amd64.deb).
    Dist,
    /// Build the Debian package (`dist`), install it with dpkg, check what
    /// it installed, run the installed guard (check, config --check, one
    /// fork-bomb integration test), and purge it. Part of `test`.
    PackageTest,
    /// Build the static agent and install it as a systemd service: the
    /// binary at /usr/local/bin/guard, packaging/guard.service at
    /// /etc/systemd/system/guard.service (then `systemctl enable --now
    /// guard`), the example config at /etc/guard/guard.toml (when there is
    /// none), the man page and bash completion under /usr/local/share.
    Install,
    /// Set up, build the static agent and test workloads, and boot Debian's
    /// kernels (6.1 and 6.12, cloud flavour, from the package lists) in qemu
    /// with them: pure cgroup v2, the detectors checked inside, then a
    /// one-vCPU guest under a fork churn. Takes 10 to 20 minutes per kernel
    /// (software emulation); the consoles are kept in target/vm/.
    VmTest {
        /// Only this kernel series (6.1 or 6.12).
        #[arg(long)]
        kernel: Option<String>,
        /// Only this guest: matrix (two vCPUs, the detectors) or churn (one
        /// vCPU under a fork churn).
        #[arg(long, value_parser = ["matrix", "churn"])]
        guest: Option<String>,
    },
}

const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPF_LINKER_VERSION: &str = "0.13";

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Setup => setup(),
        Cmd::Build => {
            setup()?;
            build()
        }
        Cmd::Run { args } => {
            setup()?;
            build()?;
            require_root("the agent loads eBPF programs")?;
            let err = Command::new(workspace().join("target/release/guard"))
                .args(args)
                .exec();
            Err(err).context("starting target/release/guard")
        }
        Cmd::Test { filter, no_vm } => {
            setup()?;
            build()?;
            test(filter.as_deref())?;
            if filter.is_some() {
                return Ok(());
            }
            // The release path: the Debian package, installed and run.
            package::package_test(&workspace())?;
            if no_vm {
                return Ok(());
            }
            setup_vm()?;
            vm::vm_test(&workspace(), None, None)
        }
        Cmd::Schema => {
            setup()?;
            build()?;
            schema()
        }
        Cmd::Dist => {
            setup()?;
            package::dist(&workspace()).map(|_| ())
        }
        Cmd::PackageTest => {
            setup()?;
            build()?;
            require_root("dpkg -i installs the package")?;
            package::package_test(&workspace())
        }
        Cmd::Install => {
            setup()?;
            require_root("installing into /usr/local/bin and /etc/systemd/system")?;
            install(&package::dist(&workspace())?)
        }
        Cmd::VmTest { kernel, guest } => {
            setup()?;
            setup_vm()?;
            vm::vm_test(&workspace(), kernel.as_deref(), guest.as_deref())
        }
        Cmd::Bench { rounds, only } => {
            setup()?;
            build()?;
            require_root("the benchmarks load the agent")?;
            bench::run(&workspace(), rounds, only.as_deref())
        }
    }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn require_root(why: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("run this as root: {why}");
    }
    Ok(())
}

/// Runs a command, echoing it, failing with its status.
/// Writes the generated schema and field reference into the repository.
fn schema() -> Result<()> {
    let guard = workspace().join("target/release/guard");
    for (args, file) in [
        (&["schema"][..], "schema/guard.schema.json"),
        (&["schema", "--markdown"][..], "docs/schema-fields.md"),
    ] {
        let out = Command::new(&guard)
            .args(args)
            .output()
            .with_context(|| format!("running {} {}", guard.display(), args.join(" ")))?;
        ensure!(
            out.status.success(),
            "guard {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(workspace().join(file), &out.stdout)
            .with_context(|| format!("writing {file}"))?;
        eprintln!("xtask: wrote {file}");
    }
    Ok(())
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: {}", show(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("starting {}", show(cmd)))?;
    ensure!(status.success(), "{} failed: {status}", show(cmd));
    Ok(())
}

fn show(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn cargo_bin_dir() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

/// PATH with cargo's bin directory (where bpf-linker is installed) first.
fn path_with_cargo_bin() -> OsString {
    let mut paths = vec![cargo_bin_dir()];
    if let Some(path) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(paths).unwrap_or_default()
}

fn apt_install(packages: &[&str]) -> Result<()> {
    require_root("installing Debian packages")?;
    let install = || {
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"))
    };
    let update = || run(Command::new("apt-get").args(["update", "-q"]));
    let have_lists = Path::new("/var/lib/apt/lists")
        .read_dir()
        .is_ok_and(|d| d.count() > 2);
    if !have_lists {
        update()?;
        return install();
    }
    // Stale package lists: refresh once and retry.
    install().or_else(|_| update().and_then(|()| install()))
}

fn setup() -> Result<()> {
    // 1. The nightly toolchain with rust-src (eBPF programs build core).
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"])).context(
        "rustup is not on PATH: guard builds its eBPF programs with rustup's nightly toolchain",
    )?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))
    .unwrap_or_default();
    for component in ["rust-src", "clippy"] {
        if !components.lines().any(|l| l.starts_with(component)) {
            run(Command::new("rustup").args([
                "component",
                "add",
                component,
                "--toolchain",
                "nightly",
            ]))?;
        }
    }
    // The lints `test` runs on the default toolchain.
    let stable = output(Command::new("rustup").args(["component", "list", "--installed"]))
        .unwrap_or_default();
    for component in ["clippy", "rustfmt"] {
        if !stable.lines().any(|l| l.starts_with(component)) {
            run(Command::new("rustup").args(["component", "add", component]))?;
        }
    }

    // The static build's target (`cargo xtask dist`).
    let targets =
        output(Command::new("rustup").args(["target", "list", "--installed"])).unwrap_or_default();
    if !targets.lines().any(|l| l == vm::MUSL) {
        run(Command::new("rustup").args(["target", "add", vm::MUSL]))?;
    }

    // 2. LLVM 22 (bpf-linker links against it) and the tools the tests drive.
    let mut missing = Vec::new();
    if !Path::new(LLVM_PREFIX).join("bin/llvm-config").exists() {
        missing.extend(["llvm-22-dev", "libpolly-22-dev"]);
    }
    for (tool, package) in [
        ("mkfs.ext4", "e2fsprogs"),
        ("losetup", "mount"),
        ("fsfreeze", "util-linux"),
        // A real service manager for the crash-loop tests (runsv).
        ("runsv", "runit"),
        // Real status polls and retries for the crash-loop tests.
        ("curl", "curl"),
        ("pg_isready", "postgresql-client"),
        // The unit is checked with `systemd-analyze verify`.
        ("systemd-analyze", "systemd"),
        // `guard top` is driven in a terminal multiplexer.
        ("tmux", "tmux"),
    ] {
        if !tool_exists(tool) {
            missing.push(package);
        }
    }
    if !missing.is_empty() {
        apt_install(&missing)?;
    }
    promtool()?;
    kubernetes_validate()?;

    // 3. bpf-linker built against LLVM 22.
    let linker = cargo_bin_dir().join("bpf-linker");
    let version = output(Command::new(&linker).arg("--version")).unwrap_or_default();
    if !version
        .split_whitespace()
        .nth(1)
        .is_some_and(|v| v.starts_with(BPF_LINKER_VERSION))
    {
        let path = format!(
            "{LLVM_PREFIX}/bin:{}",
            path_with_cargo_bin().to_string_lossy()
        );
        run(Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                &format!("^{BPF_LINKER_VERSION}"),
                "--force",
            ])
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("PATH", path))?;
    }
    Ok(())
}

/// Where the tests find promtool (they check the metrics with it).
pub(crate) fn promtool_path() -> PathBuf {
    workspace().join("target/tools/promtool")
}

/// promtool, from Debian's `prometheus` package but without installing it
/// (that would add a user and a server): the package is downloaded and the
/// one binary taken out into target/tools/.
fn promtool() -> Result<()> {
    let tool = promtool_path();
    if tool.exists() {
        return Ok(());
    }
    let dir = workspace().join("target/tools");
    std::fs::create_dir_all(&dir)?;
    let mut download = Command::new("apt-get");
    download
        .args(["download", "-q", "prometheus"])
        .current_dir(&dir);
    if run(&mut download).is_err() {
        run(Command::new("apt-get").args(["update", "-q"]))?;
        run(&mut download)?;
    }
    let deb = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("prometheus_") && n.ends_with(".deb"))
        })
        .context("apt-get download prometheus left no .deb")?;
    let extract = format!(
        "dpkg-deb --fsys-tarfile '{}' | tar -xO ./usr/bin/promtool > '{}.part'",
        deb.display(),
        tool.display()
    );
    run(Command::new("sh").args(["-c", &extract]))?;
    std::fs::set_permissions(
        tool.with_extension("part"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    std::fs::rename(tool.with_extension("part"), &tool)?;
    std::fs::remove_file(&deb)?;
    Ok(())
}

/// kubernetes-validate (PyPI), which checks the manifests against
/// Kubernetes' own schemas offline, in a virtualenv under target/tools/.
fn kubernetes_validate() -> Result<()> {
    let venv = workspace().join("target/tools/kubernetes-validate");
    if venv.join("bin/kubernetes-validate").exists() {
        return Ok(());
    }
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    run(Command::new(venv.join("bin/pip")).args(["install", "-q", "kubernetes-validate==1.37.0"]))
}

/// Installs the static binary and the unit; reloads systemd when it runs.
fn install(binary: &Path) -> Result<()> {
    let unit = workspace().join("packaging/guard.service");
    let dist = workspace().join("target/dist");
    let (man, bash) = (dist.join("guard.1"), dist.join("guard.bash"));
    for (from, to, mode) in [
        (binary, "/usr/local/bin/guard", "0755"),
        (unit.as_path(), "/etc/systemd/system/guard.service", "0644"),
        (man.as_path(), "/usr/local/share/man/man1/guard.1", "0644"),
        (
            bash.as_path(),
            "/usr/local/share/bash-completion/completions/guard",
            "0644",
        ),
    ] {
        run(Command::new("install")
            .args(["-D", "-m", mode])
            .arg(from)
            .arg(to))?;
    }
    // The example config (every key commented out), never over an
    // operator's own.
    let config = Path::new("/etc/guard/guard.toml");
    if config.exists() {
        eprintln!("xtask: keeping the existing {}", config.display());
    } else {
        run(Command::new("install")
            .args(["-D", "-m", "0644"])
            .arg(workspace().join("packaging/guard.toml"))
            .arg(config))?;
    }
    if Path::new("/run/systemd/system").is_dir() {
        run(Command::new("systemctl").arg("daemon-reload"))?;
        eprintln!("xtask: installed; start it with `systemctl enable --now guard`");
    } else {
        eprintln!(
            "xtask: installed; this host does not run systemd, so start /usr/local/bin/guard \
             by other means"
        );
    }
    Ok(())
}

/// What the VM tests need besides the build: qemu, a static busybox for
/// the guests, cpio, and xz and zstd for compressed kernel modules.
pub(crate) fn setup_vm() -> Result<()> {
    let mut missing = Vec::new();
    for (tool, package) in [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("cpio", "cpio"),
        ("xz", "xz-utils"),
        ("zstd", "zstd"),
    ] {
        if !tool_exists(tool) {
            missing.push(package);
        }
    }
    // busybox-static replaces a dynamic busybox at /bin/busybox.
    let busybox = std::fs::read("/bin/busybox").unwrap_or_default();
    if busybox.is_empty() || busybox.windows(15).any(|w| w == b"/lib64/ld-linux") {
        missing.push("busybox-static");
    }
    if !missing.is_empty() {
        apt_install(&missing)?;
    }
    Ok(())
}

fn tool_exists(tool: &str) -> bool {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .any(|d| Path::new(d).join(tool).exists())
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace())
        .env("PATH", path_with_cargo_bin());
    cmd
}

fn build() -> Result<()> {
    run(cargo().args([
        "build",
        "--release",
        "--package",
        "guard-user",
        "--package",
        "guard-tests",
        "--bins",
    ]))
}

/// The lints CI holds the code to: formatting, and clippy with warnings
/// denied, for the host crates and for the eBPF crate on its own target.
fn lint() -> Result<()> {
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--release",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(Command::new("cargo")
        .current_dir(workspace())
        .env("PATH", path_with_cargo_bin())
        .args([
            "+nightly",
            "clippy",
            "--package",
            "guard-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--release",
            "--target-dir",
            "target/ebpf-clippy",
            "--",
            "-D",
            "warnings",
        ]))
}

fn test(filter: Option<&str>) -> Result<()> {
    lint()?;
    // Unit tests: pure logic, no root needed.
    run(cargo().args([
        "test",
        "--release",
        "--workspace",
        "--exclude",
        "guard-ebpf",
        "--exclude",
        "guard-tests",
    ]))?;
    // Integration tests: the real agent on this kernel, one at a time (they
    // share the kernel, cgroup trees and sysctls).
    require_root("the integration tests load the agent and make cgroups")?;
    let mut cmd = cargo();
    cmd.args([
        "test",
        "--release",
        "--package",
        "guard-tests",
        "--",
        "--test-threads=1",
    ]);
    if let Some(filter) = filter {
        cmd.arg(filter);
    }
    cmd.env("GUARD_BIN", workspace().join("target/release/guard"))
        .env("GUARD_PROMTOOL", promtool_path())
        .env(
            "GUARD_KUBE_VALIDATE",
            workspace().join("target/tools/kubernetes-validate/bin/kubernetes-validate"),
        );
    run(&mut cmd)
}
