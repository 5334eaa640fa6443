//! `cargo xtask dist`: the release artefacts in target/dist/ (the static,
//! stripped agent with its SHA-256, completions, man page, and a Debian
//! package of them with the unit and the example config); and the package
//! check `cargo xtask test` runs: install the .deb with dpkg, run the
//! installed guard, purge it.
//!
//! The .deb is assembled with `dpkg-deb --build` from a staging tree rather
//! than with cargo-deb: the binary is the musl build, not a cargo target
//! cargo-deb would build, and dpkg-deb is on every Debian machine.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{
    output, run,
    vm::{MUSL, build_static, ensure_static},
};

const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The Debian revision of the package.
const DEB_REVISION: &str = "1";

/// Builds the static agent (musl, the eBPF object embedded), checks that it
/// has no program interpreter, strips it, and writes it with its SHA-256,
/// completions, man page and Debian package to `target/dist/`. Returns the
/// binary's path.
pub fn dist(workspace: &Path) -> Result<PathBuf> {
    build_static("guard-user", &["guard"])?;
    let built = workspace.join(format!("target/{MUSL}/release/guard"));
    ensure_static(&built)?;
    let dir = workspace.join("target/dist");
    std::fs::create_dir_all(&dir)?;
    let name = format!("guard-{VERSION}-x86_64-linux-musl");
    let out = dir.join(&name);
    // Symbols and debug info out: a quarter of the file, none of the code.
    run(Command::new("strip")
        .args(["--strip-all", "-o"])
        .arg(&out)
        .arg(&built))?;
    ensure_static(&out)?;
    let sum = output(Command::new("sha256sum").arg(&name).current_dir(&dir))
        .context("sha256sum failed")?;
    std::fs::write(dir.join(format!("{name}.sha256")), &sum)?;
    // Shell completions and the man page, from the binary's own flags.
    for (args, file) in [
        (&["completions", "bash"][..], "guard.bash"),
        (&["completions", "zsh"][..], "_guard"),
        (&["completions", "fish"][..], "guard.fish"),
        (&["man"][..], "guard.1"),
    ] {
        let text = output(Command::new(&out).args(args))
            .with_context(|| format!("guard {} failed", args.join(" ")))?;
        std::fs::write(dir.join(file), text)?;
    }
    let deb = deb(workspace, &dir, &out)?;
    let size = std::fs::metadata(&out)?.len();
    eprintln!(
        "xtask: {} (static, stripped, {:.1} MB)\nxtask: {}\nxtask: {}",
        out.display(),
        size as f64 / 1e6,
        sum.trim(),
        deb.display()
    );
    Ok(out)
}

/// The Debian package's file name.
pub fn deb_name() -> String {
    format!("guard_{VERSION}-{DEB_REVISION}_amd64.deb")
}

/// Assembles `guard_VERSION-1_amd64.deb` in `dir` from the artefacts there.
fn deb(workspace: &Path, dir: &Path, binary: &Path) -> Result<PathBuf> {
    let root = dir.join("deb-root");
    if root.exists() {
        std::fs::remove_dir_all(&root)?;
    }
    let unit = std::fs::read_to_string(workspace.join("packaging/guard.service"))?;
    ensure!(
        unit.contains("ExecStart=/usr/local/bin/guard "),
        "packaging/guard.service: ExecStart is not /usr/local/bin/guard's; the package rewrites it"
    );
    let unit = unit
        .replace(
            "ExecStart=/usr/local/bin/guard ",
            "ExecStart=/usr/bin/guard ",
        )
        .replace(
            "# as written here. Then",
            "# as written there (this copy is the package's). Then",
        );
    let files: [(&str, Source, u32); 8] = [
        ("usr/bin/guard", Source::File(binary.to_owned()), 0o755),
        (
            "lib/systemd/system/guard.service",
            Source::Text(unit),
            0o644,
        ),
        (
            "etc/guard/guard.toml",
            Source::File(workspace.join("packaging/guard.toml")),
            0o644,
        ),
        (
            "usr/share/man/man1/guard.1",
            Source::File(dir.join("guard.1")),
            0o644,
        ),
        (
            "usr/share/bash-completion/completions/guard",
            Source::File(dir.join("guard.bash")),
            0o644,
        ),
        (
            "usr/share/zsh/vendor-completions/_guard",
            Source::File(dir.join("_guard")),
            0o644,
        ),
        (
            "usr/share/fish/vendor_completions.d/guard.fish",
            Source::File(dir.join("guard.fish")),
            0o644,
        ),
        (
            "usr/share/doc/guard/README.md",
            Source::File(workspace.join("README.md")),
            0o644,
        ),
    ];
    for (path, source, mode) in files {
        let to = root.join(path);
        std::fs::create_dir_all(to.parent().context("a parent")?)?;
        match source {
            Source::File(from) => {
                std::fs::copy(&from, &to).with_context(|| format!("{}", from.display()))?;
            }
            Source::Text(text) => std::fs::write(&to, text)?,
        }
        set_mode(&to, mode)?;
    }
    run(Command::new("gzip")
        .args(["-9n"])
        .arg(root.join("usr/share/man/man1/guard.1")))?;
    let control = root.join("DEBIAN");
    std::fs::create_dir_all(&control)?;
    let installed_kib = dir_size(&root)?.div_ceil(1024);
    std::fs::write(
        control.join("control"),
        format!(
            "Package: guard\n\
             Version: {VERSION}-{DEB_REVISION}\n\
             Architecture: amd64\n\
             Maintainer: guard developers <guard@localhost>\n\
             Installed-Size: {installed_kib}\n\
             Section: admin\n\
             Priority: optional\n\
             Homepage: https://github.com/guard/guard\n\
             Description: kernel-level fork and memory guard (eBPF)\n \
             guard watches forks, exits, memory and blocked tasks with eBPF\n \
             probes and acts on the offending process subtree only: a fork\n \
             bomb, a leak of processes, a crash loop, a memory runaway, before\n \
             pids.max, the OOM killer or the hung-task detector trip. The\n \
             binary is static (musl) and needs a kernel with BTF.\n \
             .\n \
             The unit is installed but neither enabled nor started: review\n \
             /etc/guard/guard.toml (every action is log by default), then\n \
             systemctl enable --now guard.\n"
        ),
    )?;
    std::fs::write(control.join("conffiles"), "/etc/guard/guard.toml\n")?;
    // Neither enabled nor started by the package: an agent that signals
    // processes is switched on by its operator. systemd learns of the
    // unit; a removal stops it first.
    for (script, text) in [
        (
            "postinst",
            "#!/bin/sh\nset -e\nif [ -d /run/systemd/system ]; then\n    \
             systemctl daemon-reload >/dev/null || true\nfi\n",
        ),
        (
            "prerm",
            "#!/bin/sh\nset -e\nif [ -d /run/systemd/system ] && [ \"$1\" = remove ]; then\n    \
             systemctl stop guard.service >/dev/null 2>&1 || true\nfi\n",
        ),
        (
            "postrm",
            "#!/bin/sh\nset -e\nif [ -d /run/systemd/system ]; then\n    \
             systemctl daemon-reload >/dev/null || true\nfi\n",
        ),
    ] {
        std::fs::write(control.join(script), text)?;
        set_mode(&control.join(script), 0o755)?;
    }
    let deb = dir.join(deb_name());
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&root)
        .arg(&deb))?;
    std::fs::remove_dir_all(&root)?;
    Ok(deb)
}

enum Source {
    File(PathBuf),
    Text(String),
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

fn dir_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// Whether dpkg knows a package named guard here (installed or with its
/// config files left).
fn guard_package_present() -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f", "${db:Status-Status}", "guard"]))
        .is_some_and(|status| !status.trim().is_empty() && status.trim() != "not-installed")
}

/// Installs target/dist's package with dpkg, checks what it put where,
/// runs the installed guard (`--version`, `check`, `config --check` on the
/// installed config, `man`), then one detector check with it (the fork
/// bomb integration test, GUARD_BIN=/usr/bin/guard), and purges it, also
/// when a step fails.
pub fn package_test(workspace: &Path) -> Result<()> {
    dist(workspace)?;
    if guard_package_present() {
        bail!(
            "a package named guard is already known to dpkg here; the package test installs \
             and purges its own, so remove it first (dpkg --purge guard)"
        );
    }
    let deb = workspace.join("target/dist").join(deb_name());
    run(Command::new("dpkg").arg("-i").arg(&deb))?;
    let result = installed_checks(workspace);
    let purge = run(Command::new("dpkg").args(["--purge", "guard"]));
    result?;
    purge?;
    ensure!(
        !Path::new("/usr/bin/guard").exists() && !Path::new("/etc/guard/guard.toml").exists(),
        "dpkg --purge guard left /usr/bin/guard or /etc/guard/guard.toml behind"
    );
    eprintln!("xtask: package test passed ({})", deb.display());
    Ok(())
}

fn installed_checks(workspace: &Path) -> Result<()> {
    let listed = output(Command::new("dpkg").args(["-L", "guard"])).context("dpkg -L guard")?;
    for path in [
        "/usr/bin/guard",
        "/lib/systemd/system/guard.service",
        "/etc/guard/guard.toml",
        "/usr/share/man/man1/guard.1.gz",
        "/usr/share/bash-completion/completions/guard",
    ] {
        ensure!(
            listed.lines().any(|l| l == path),
            "the package does not install {path}:\n{listed}"
        );
    }
    let unit = std::fs::read_to_string("/lib/systemd/system/guard.service")?;
    ensure!(
        unit.contains("ExecStart=/usr/bin/guard --json"),
        "the installed unit does not start /usr/bin/guard"
    );
    let verify = output(Command::new("sh").args([
        "-c",
        "systemd-analyze verify /lib/systemd/system/guard.service 2>&1; echo rc=$?",
    ]))
    .unwrap_or_default();
    ensure!(
        verify.trim() == "rc=0",
        "systemd-analyze verify on the installed unit: {verify}"
    );
    let version = output(Command::new("/usr/bin/guard").arg("--version")).unwrap_or_default();
    ensure!(
        version.trim() == format!("guard {VERSION}"),
        "/usr/bin/guard --version said {version:?}"
    );
    run(Command::new("/usr/bin/guard").arg("check"))?;
    // The packaged config: root's, 0644, every key commented out, read by
    // default.
    run(Command::new("/usr/bin/guard").args(["config", "--check"]))?;
    let page = output(Command::new("sh").args(["-c", "zcat /usr/share/man/man1/guard.1.gz"]))
        .unwrap_or_default();
    ensure!(
        page.contains(".SH SIGNALS") && page.contains(".SH FILES"),
        "the installed man page lacks its sections"
    );
    // One detector check, by the installed binary.
    run(crate::cargo()
        .args([
            "test",
            "--release",
            "--package",
            "guard-tests",
            "--test",
            "fork_guard",
            "--",
            "--test-threads=1",
            "--exact",
            "a_bash_fork_bomb_is_killed_and_the_bystander_lives",
        ])
        .env("GUARD_BIN", "/usr/bin/guard")
        .current_dir(workspace))
}
