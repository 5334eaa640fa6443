//! `cargo xtask dist` builds the static `guard`; `cargo xtask vm-test`
//! boots Debian's own kernels in qemu with it and runs `guard-vmcheck`
//! inside.
//!
//! Each guest is a kernel package from Debian's archive (the newest of each
//! series the package lists offer, downloaded once into `target/vm/cache`
//! and unpacked with `dpkg-deb -x`, never installed) and an initramfs root
//! made here: busybox (static), the static `guard`, the static test
//! workloads and checker, the kernel's `loop` and `zram` modules, and an
//! `/init` that mounts a pure cgroup v2 tree, gives the guest swap on zram,
//! runs the checks and powers off. Nothing from the host's libraries goes
//! in: the binaries have to be static to run.
//!
//! Guests run under software emulation (`-accel tcg`): this machine's KVM
//! cannot boot Debian's kernels. Multi-threaded TCG breaks the kernel's
//! live code patching (static keys) with more than one vCPU, and guard
//! attaching and detaching probes patches code, so a two-vCPU guest runs
//! single-threaded TCG. Each kernel boots twice: two vCPUs for the
//! detectors and refusal (`guard-vmcheck matrix`, Debian's LSM list, which
//! has `bpf`), one vCPU under a fork churn and for refusal's fallback
//! (`guard-vmcheck churn`, booted with an LSM list without `bpf`).
//!
//! GUARD_VM_BIN=PATH boots another static build of the agent;
//! GUARD_VM_CHECKS=NAME,NAME runs only those checks, in that order, as often
//! as named (`refuse,refuse,refuse` to chase a flaky one).

use std::{
    io::{BufRead as _, BufReader, Read as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{cargo, output, run};

pub const MUSL: &str = "x86_64-unknown-linux-musl";

/// A kernel series to test: the newest Debian package named
/// `{prefix}<version>{suffix}` in the package lists.
pub struct Series {
    pub name: &'static str,
    prefix: &'static str,
    suffix: &'static str,
}

/// Debian 12's kernel and its backported 6.12 (both built with BTF). The
/// cloud flavour: smaller, and it has what the guest needs (ext4 built in,
/// loop and zram as modules).
pub const SERIES: &[Series] = &[
    Series {
        name: "6.1",
        prefix: "linux-image-6.1.0-",
        suffix: "-cloud-amd64-unsigned",
    },
    Series {
        name: "6.12",
        prefix: "linux-image-6.12.",
        suffix: "+deb12-cloud-amd64-unsigned",
    },
];

/// Modules the guest loads, dependencies first: a loop device for the
/// frozen file system, zram and its compressors for swap.
const MODULES: &[&str] = &[
    "loop",
    "zsmalloc",
    "lzo_compress",
    "lzo_decompress",
    "lzo",
    "lzo-rle",
    "lz4_compress",
    "lz4_decompress",
    "lz4",
    "zram",
];

/// The checks each boot must report, by mode.
const MATRIX_CHECKS: &[&str] = &[
    "guard_check",
    "stream",
    "bomb",
    "refuse",
    "refuse_threads",
    "refuse_ladder",
    "refuse_lift",
    "refuse_leak",
    "memory_kill",
    "oom_record",
    "blocked_vfork",
    "hung_task",
    "collective_memory",
    "host_memory_runaway",
];
const CHURN_CHECKS: &[&str] = &["one_cpu_churn", "refuse_fallback"];

/// The churn guest's LSM list: Debian's without `bpf`, so that refusal's
/// fallback is checked on each kernel too (the matrix guest keeps the
/// default list, which has it).
const NO_BPF_LSM: &str = "lsm=landlock,lockdown,yama,integrity,apparmor";

/// Builds `bins` of `package` for musl, statically linked.
pub(crate) fn build_static(package: &str, bins: &[&str]) -> Result<()> {
    let mut cmd = cargo();
    cmd.args(["build", "--release", "--target", MUSL, "--package", package]);
    for bin in bins {
        cmd.args(["--bin", bin]);
    }
    run(&mut cmd)
}

/// Fails unless `path` is an ELF executable without `PT_INTERP` (needs no
/// dynamic loader, so no library of the host it runs on).
pub(crate) fn ensure_static(path: &Path) -> Result<()> {
    let elf = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    ensure!(
        elf.get(..4) == Some(b"\x7fELF"),
        "{} is not ELF",
        path.display()
    );
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    let (phoff, size, count) = (
        u64_at(0x20).context("ELF header")? as usize,
        u16_at(0x36).context("ELF header")? as usize,
        u16_at(0x38).context("ELF header")? as usize,
    );
    for i in 0..count {
        let kind = elf
            .get(phoff + i * size..phoff + i * size + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
            .context("ELF program header")?;
        // PT_INTERP
        ensure!(
            kind != 3,
            "{} needs a dynamic loader: it is not static",
            path.display()
        );
    }
    Ok(())
}

/// The newest package of `series` in the package lists.
fn newest_package(series: &Series) -> Result<String> {
    let names = output(Command::new("apt-cache").args(["pkgnames", series.prefix]))
        .context("apt-cache failed: the VM tests need Debian's package lists")?;
    let version = |name: &str| -> Option<Vec<u64>> {
        let middle = name
            .strip_prefix(series.prefix)?
            .strip_suffix(series.suffix)?;
        middle
            .split(['.', '-'])
            .map(|p| p.parse().ok())
            .collect::<Option<Vec<u64>>>()
    };
    names
        .lines()
        .filter_map(|n| Some((version(n)?, n.to_owned())))
        .max()
        .map(|(_, n)| n)
        .with_context(|| {
            format!(
                "no {}*{} package in the package lists (apt-get update?)",
                series.prefix, series.suffix
            )
        })
}

/// Downloads and unpacks `package` into the cache once; returns the
/// unpacked tree.
fn fetch_kernel(cache: &Path, package: &str) -> Result<PathBuf> {
    let tree = cache.join(package);
    if tree.join("boot").is_dir() {
        return Ok(tree);
    }
    std::fs::create_dir_all(cache)?;
    run(Command::new("apt-get")
        .args(["download", "-q", package])
        .current_dir(cache))?;
    let deb = std::fs::read_dir(cache)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
        })
        .with_context(|| format!("apt-get download left no {package} .deb"))?;
    let partial = cache.join(format!("{package}.partial"));
    let _ = std::fs::remove_dir_all(&partial);
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&partial))?;
    std::fs::rename(&partial, &tree)?;
    std::fs::remove_file(&deb)?;
    Ok(tree)
}

/// The kernel image and modules directory of an unpacked package.
fn kernel_files(tree: &Path) -> Result<(PathBuf, PathBuf)> {
    let image = std::fs::read_dir(tree.join("boot"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .context("no vmlinuz in the kernel package")?;
    let modules = std::fs::read_dir(tree.join("lib/modules"))?
        .flatten()
        .map(|e| e.path())
        .next()
        .context("no modules in the kernel package")?;
    Ok((image, modules))
}

/// Finds `name.ko` (or compressed) under `modules` and writes it
/// uncompressed to `dest` (busybox's insmod takes plain modules).
fn copy_module(modules: &Path, name: &str, dest: &Path) -> Result<bool> {
    let found = walk(modules)?.into_iter().find(|p| {
        p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
            [".ko", ".ko.xz", ".ko.zst"]
                .iter()
                .any(|ext| n == format!("{name}{ext}"))
        })
    });
    let Some(found) = found else {
        return Ok(false);
    };
    let text = found.to_string_lossy();
    let data = if text.ends_with(".xz") || text.ends_with(".zst") {
        let tool = if text.ends_with(".xz") { "xz" } else { "zstd" };
        let out = Command::new(tool)
            .args(["-d", "-c"])
            .arg(&found)
            .output()
            .with_context(|| format!("{tool} -d {text}"))?;
        ensure!(out.status.success(), "{tool} -d {text} failed");
        out.stdout
    } else {
        std::fs::read(&found)?
    };
    std::fs::write(dest, data)?;
    Ok(true)
}

fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)?.flatten() {
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    Ok(out)
}

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /tmp /run
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
for pass in 1 2 3; do
    for m in /lib/modules/*.ko; do insmod "$m" 2>/dev/null; done
done
mode=$(sed -n 's/.*guard\.mode=\([a-z]*\).*/\1/p' /proc/cmdline)
echo "VMCHECK kernel ok $(uname -r), $(nproc) vCPU, $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) MiB"
if { [ "$mode" = matrix ] || [ "$mode" = bench ]; } && [ -e /sys/block/zram0 ]; then
    echo 1G > /sys/block/zram0/disksize && mkswap /dev/zram0 > /dev/null && swapon /dev/zram0 \
        && echo "VMCHECK swap ok 1 GiB on zram ($(cat /sys/block/zram0/comp_algorithm))"
fi
if [ "$mode" = bench ]; then
    # Who sends a SIGKILL, for a checker that dies of one (the console
    # keeps the last ones).
    mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
    t=/sys/kernel/tracing/events/signal/signal_generate
    echo 'sig == 9' > $t/filter 2>/dev/null && echo 1 > $t/enable 2>/dev/null
fi
GUARD_BIN=/bin/guard GUARD_WORKLOAD=/bin/guard-workload /bin/guard-vmcheck "$mode"
rc=$?
if [ $rc -ne 0 ] && [ -e /sys/kernel/tracing/trace ]; then
    echo "VMTRACE the checker ended with $rc; the last SIGKILLs sent:"
    tail -n 40 /sys/kernel/tracing/trace | sed 's/^/VMTRACE /'
fi
sync
poweroff -f
"#;

/// Writes the guest's root and packs it as a newc cpio archive.
fn initramfs(
    work: &Path,
    name: &str,
    modules: &Path,
    bins: &[(&str, PathBuf)],
    host_files: &[PathBuf],
) -> Result<PathBuf> {
    let root = work.join(format!("root-{name}"));
    let _ = std::fs::remove_dir_all(&root);
    for dir in ["bin", "lib/modules", "proc", "sys", "dev", "tmp", "run"] {
        std::fs::create_dir_all(root.join(dir))?;
    }
    let busybox = Path::new("/bin/busybox");
    ensure_static(busybox).context("the guest needs a static busybox (busybox-static)")?;
    std::fs::copy(busybox, root.join("bin/busybox"))?;
    for (dest, src) in bins {
        ensure_static(src)?;
        std::fs::copy(src, root.join("bin").join(dest))
            .with_context(|| format!("copying {}", src.display()))?;
    }
    let mut loaded = Vec::new();
    for (i, module) in MODULES.iter().enumerate() {
        let dest = root.join(format!("lib/modules/{i:02}-{module}.ko"));
        if copy_module(modules, module, &dest)? {
            loaded.push(*module);
        }
    }
    ensure!(
        loaded.contains(&"loop") && loaded.contains(&"zram"),
        "the kernel package has no loop or zram module (found {loaded:?})"
    );
    for file in host_files {
        let dest = root.join(file.strip_prefix("/").unwrap_or(file));
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::copy(file, &dest).with_context(|| format!("copying {}", file.display()))?;
    }
    let init = root.join("init");
    std::fs::write(&init, INIT)?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755))?;
    let archive = work.join(format!("initrd-{name}.cpio"));
    run(Command::new("sh")
        .arg("-c")
        .arg(format!(
            "find . | cpio --quiet -o -H newc > {}",
            archive.display()
        ))
        .current_dir(&root))?;
    Ok(archive)
}

/// One check's line from a guest.
#[derive(Debug)]
pub struct CheckLine {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// Boots a guest and returns the check lines it printed. Its console is
/// kept in `log`.
fn boot(
    image: &Path,
    initrd: &Path,
    vcpus: u32,
    mode: &str,
    extra: &str,
    log: &Path,
    timeout: Duration,
) -> Result<Vec<CheckLine>> {
    let accel = if vcpus > 1 {
        "tcg,thread=single"
    } else {
        "tcg,thread=multi"
    };
    // The bench's refused Python bombs keep 150-odd interpreters alive at
    // once under a 1 GiB cgroup limit: a 2 GiB guest ran out during one
    // (its checker was SIGKILLed), so the bench boots with 4 GiB.
    let memory = if mode == "bench" { "4096" } else { "2048" };
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", accel, "-cpu", "max", "-m", memory, "-smp"])
        .arg(vcpus.to_string())
        .arg("-kernel")
        .arg(image)
        .arg("-initrd")
        .arg(initrd)
        .args([
            "-append",
            &format!("console=ttyS0 panic=-1 psi=1 quiet guard.mode={mode} {extra}"),
            "-nographic",
            "-no-reboot",
            "-nodefaults",
            "-serial",
            "stdio",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    eprintln!("xtask: {}", crate::show(&cmd));
    let mut child = cmd.spawn().context("starting qemu-system-x86_64")?;
    let stdout = child.stdout.take().context("qemu stdout")?;
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let started = Instant::now();
    let mut console = String::new();
    let mut lines = Vec::new();
    let mut done = false;
    while let Some(left) = timeout.checked_sub(started.elapsed()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                let line = line.trim_end_matches('\r').to_owned();
                console.push_str(&line);
                console.push('\n');
                if let Some(rest) = line.strip_prefix("VMCHECK ") {
                    eprintln!("  {rest}");
                    if rest == "done" {
                        done = true;
                        continue;
                    }
                    let mut parts = rest.splitn(3, ' ');
                    let (name, verdict, detail) = (
                        parts.next().unwrap_or_default(),
                        parts.next().unwrap_or_default(),
                        parts.next().unwrap_or_default(),
                    );
                    lines.push(CheckLine {
                        name: name.to_owned(),
                        ok: verdict == "ok",
                        detail: detail.to_owned(),
                    });
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    if child.try_wait()?.is_none() {
        let _ = child.kill();
    }
    let _ = child.wait();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    console.push_str(&err);
    std::fs::write(log, &console)?;
    if !done {
        lines.push(CheckLine {
            name: "boot".into(),
            ok: false,
            detail: format!(
                "the guest did not finish within {} s (console in {})",
                timeout.as_secs(),
                log.display()
            ),
        });
    }
    Ok(lines)
}

/// The static binaries a guest runs: the agent (GUARD_VM_BIN boots
/// another build instead: an older one, to see a check fail where it
/// should), the workloads and the checker.
fn guest_binaries(workspace: &Path) -> Result<[(&'static str, PathBuf); 3]> {
    let guard = match std::env::var_os("GUARD_VM_BIN") {
        Some(path) => PathBuf::from(path),
        None => crate::package::dist(workspace)?,
    };
    build_static("guard-tests", &["guard-workload", "guard-vmcheck"])?;
    let musl = workspace.join(format!("target/{MUSL}/release"));
    Ok([
        ("guard", guard),
        ("guard-workload", musl.join("guard-workload")),
        ("guard-vmcheck", musl.join("guard-vmcheck")),
    ])
}

/// The interpreters the bomb benchmark runs, from this machine's Debian
/// userland (the guests' kernels are Debian 12's, and so is this
/// userland): bash, dash, perl and Python, each with its dynamic loader
/// and libraries (as `ldd` lists them), and the Python modules Python
/// imports to start and fork (as the interpreter itself lists them, with
/// their compiled caches). They keep their paths in the guest, so
/// `/usr/bin/perl -e 'fork while fork'` there is the same command as here.
pub const INTERPRETERS: &[&str] = &[
    "/usr/bin/bash",
    "/usr/bin/dash",
    "/usr/bin/perl",
    "/usr/bin/python3",
];

fn host_interpreters() -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = Vec::new();
    for bin in INTERPRETERS {
        let real = std::fs::canonicalize(bin)
            .with_context(|| format!("the bomb bench needs {bin} on this machine (apt-get install bash dash perl python3)"))?;
        files.push(PathBuf::from(bin));
        if real != Path::new(bin) {
            files.push(real.clone());
        }
        let out = output(Command::new("ldd").arg(&real))
            .with_context(|| format!("ldd {}", real.display()))?;
        for line in out.lines() {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
            // "/lib64/ld-linux-x86-64.so.2 (0x...)"; vdso has no path.
            let path = line
                .split("=>")
                .last()
                .and_then(|s| s.split_whitespace().next())
                .filter(|p| p.starts_with('/'));
            if let Some(p) = path {
                files.push(PathBuf::from(p));
            }
        }
    }
    const LIST_MODULES: &str = r#"
import os, sys, importlib.util
for m in list(sys.modules.values()):
    f = getattr(m, "__file__", None)
    if f and f.endswith(".py"):
        print(f)
        c = importlib.util.cache_from_source(f)
        if os.path.exists(c):
            print(c)
"#;
    let listing = output(Command::new("/usr/bin/python3").args(["-c", LIST_MODULES]))
        .context("listing the modules /usr/bin/python3 imports")?;
    files.extend(listing.lines().map(PathBuf::from));
    files.sort();
    files.dedup();
    Ok(files)
}

/// Boots one guest of the kernel series `name` in `mode` (two vCPUs, the
/// kernel's own LSM list, `extra` on its command line) and returns the
/// lines it printed: for benchmarks that need a kernel that refuses forks.
/// With `interpreters`, the guest also has this machine's
/// [`INTERPRETERS`].
pub fn guest(
    workspace: &Path,
    name: &str,
    mode: &str,
    extra: &str,
    minutes: u64,
    interpreters: bool,
) -> Result<Vec<CheckLine>> {
    let series = SERIES
        .iter()
        .find(|s| s.name == name)
        .with_context(|| format!("no kernel series {name}"))?;
    let bins = guest_binaries(workspace)?;
    let work = workspace.join("target/vm");
    let package = newest_package(series)?;
    eprintln!("xtask: kernel {name} from {package}");
    let tree = fetch_kernel(&work.join("cache"), &package)?;
    let (image, modules) = kernel_files(&tree)?;
    let host_files = if interpreters {
        host_interpreters()?
    } else {
        Vec::new()
    };
    let initrd = initramfs(&work, name, &modules, &bins, &host_files)?;
    let log = work.join(format!("console-{name}-{mode}.log"));
    boot(
        &image,
        &initrd,
        2,
        mode,
        extra,
        &log,
        Duration::from_secs(minutes * 60),
    )
}

/// `cargo xtask vm-test [--kernel SERIES]`.
pub fn vm_test(workspace: &Path, only: Option<&str>, guest: Option<&str>) -> Result<()> {
    let series: Vec<&Series> = SERIES
        .iter()
        .filter(|s| only.is_none_or(|o| o == s.name))
        .collect();
    if series.is_empty() {
        bail!(
            "no kernel series {:?}: one of {}",
            only.unwrap_or_default(),
            SERIES.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
        );
    }
    let bins = guest_binaries(workspace)?;
    let work = workspace.join("target/vm");
    let cache = work.join("cache");
    let mut report = Vec::new();
    let mut failed = false;
    for s in series {
        let package = newest_package(s)?;
        eprintln!("xtask: kernel {} from {package}", s.name);
        let tree = fetch_kernel(&cache, &package)?;
        let (image, modules) = kernel_files(&tree)?;
        let initrd = initramfs(&work, s.name, &modules, &bins, &[])?;
        for (mode, vcpus, expected, minutes, extra) in [
            ("matrix", 2, MATRIX_CHECKS, 25, ""),
            ("churn", 1, CHURN_CHECKS, 10, NO_BPF_LSM),
        ] {
            if guest.is_some_and(|g| g != mode) {
                continue;
            }
            let log = work.join(format!("console-{}-{mode}.log", s.name));
            let chosen = std::env::var("GUARD_VM_CHECKS").ok();
            let extra = match &chosen {
                Some(list) => format!("{extra} guard.checks={list}"),
                None => extra.to_owned(),
            };
            let lines = boot(
                &image,
                &initrd,
                vcpus,
                mode,
                &extra,
                &log,
                Duration::from_secs(minutes * 60),
            )?;
            // A chosen few: the rest are not missing.
            let expected = if chosen.is_some() { &[][..] } else { expected };
            for check in expected {
                if !lines.iter().any(|l| l.name == *check) {
                    failed = true;
                    report.push(format!(
                        "| {} | {mode} | {check} | MISSING | console in {} |",
                        s.name,
                        log.display()
                    ));
                }
            }
            for l in &lines {
                failed |= !l.ok;
                report.push(format!(
                    "| {} | {mode} | {} | {} | {} |",
                    s.name,
                    l.name,
                    if l.ok { "ok" } else { "FAIL" },
                    l.detail.replace('|', "/")
                ));
            }
        }
    }
    println!("| kernel | guest | check | result | detail |");
    println!("|---|---|---|---|---|");
    for line in &report {
        println!("{line}");
    }
    std::fs::write(
        work.join("results.md"),
        format!(
            "| kernel | guest | check | result | detail |\n|---|---|---|---|---|\n{}\n",
            report.join("\n")
        ),
    )?;
    ensure!(
        !failed,
        "VM checks failed (see above and target/vm/console-*.log)"
    );
    Ok(())
}
