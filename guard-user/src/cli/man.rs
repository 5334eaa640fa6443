//! `guard man`: the man page, from the flags themselves (`clap_mangen`)
//! plus the sections a flag cannot carry: EXIT STATUS, SIGNALS, FILES,
//! SEE ALSO.

use std::io::Write;

use clap::CommandFactory as _;

/// The sections after the options, in roff.
const SECTIONS: &str = r#".SH "EXIT STATUS"
.TP
\fB0\fR
guard ran and was asked to stop (SIGINT, SIGTERM), or whoever read its
stdout went away; \fBguard check\fR: guard can run here; \fBguard config\fR
and \fBguard config \-\-check\fR: the configuration is one the agent accepts.
.TP
\fB1\fR
An error that guard names on stderr with what to do: a config file that
does not parse, is not root's or is writable by others, a policy or flag the
agent refuses, a kernel without BTF, probes that cannot load, no root;
\fBguard check\fR: guard cannot run here.
.TP
\fB2\fR
A flag that does not parse (clap's usage error).
.SH SIGNALS
.TP
\fBSIGINT\fR, \fBSIGTERM\fR
Stop: lift every refusal in force, detach the probes, drain what is queued
(at most 2 s), write the summary record, exit 0.
.TP
\fBSIGHUP\fR
Read the config file again: its policies apply at once; a changed flag is
named and applies at the next start; a file that does not parse or check
keeps the running configuration. Open \fB\-\-output\fR again (logrotate).
\fBsystemctl reload guard\fR sends it.
.TP
\fBSIGUSR2\fR
Lift every refusal in force (each ends with a \fBrefusal\fR record,
\fB"ended": "lifted"\fR).
.SH FILES
.TP
\fI/etc/guard/guard.toml\fR
The config file, read when it exists (or \fB\-\-config\fR \fIFILE\fR): its
keys are the flags' names, its \fB[[policy]]\fR tables set actions per
cgroup. It and every directory above it must be root's and writable by no
one else.
.TP
\fI/lib/systemd/system/guard.service\fR
The unit the Debian package installs (\fI/etc/systemd/system/guard.service\fR
by \fBcargo xtask install\fR).
.TP
\fI/var/log/guard/\fR
Where the unit lets \fB\-\-output\fR write (its \fBLogsDirectory\fR).
.TP
\fI/sys/kernel/btf/vmlinux\fR
The kernel's BTF (\fB\-\-btf\fR), from which the probes' offsets come.
.TP
\fI/sys/fs/cgroup/\fR
The cgroup trees: scopes (\fB\-\-cgroup\fR), limits (pids.max, memory.max)
and policies' globs are read there.
.TP
\fI/sys/kernel/security/lsm\fR
The active LSMs: refusal needs \fBbpf\fR among them.
.SH "SEE ALSO"
\fBsystemd.exec\fR(5), \fBcgroups\fR(7), \fBproc\fR(5); docs/service.md and
docs/deploy.md in guard's repository.
"#;

/// Writes the man page.
pub fn render(out: &mut dyn Write) -> std::io::Result<()> {
    let man = clap_mangen::Man::new(super::Args::command());
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    man.render_subcommands_section(out)?;
    man.render_extra_section(out)?;
    out.write_all(SECTIONS.as_bytes())?;
    man.render_version_section(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_page_has_the_sections_an_operator_looks_for() {
        let mut page = Vec::new();
        super::render(&mut page).expect("render");
        let page = String::from_utf8(page).expect("utf8");
        for section in [
            ".SH NAME",
            ".SH SYNOPSIS",
            ".SH OPTIONS",
            ".SH SUBCOMMANDS",
            ".SH \"EXIT STATUS\"",
            ".SH SIGNALS",
            ".SH FILES",
            ".SH \"SEE ALSO\"",
        ] {
            assert!(page.contains(section), "no {section}");
        }
        assert!(page.contains("guard\\-man"), "guard man is listed");
    }
}
