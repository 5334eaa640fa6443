//! Incident reports (`--incident-dir`): one JSON file per incident that
//! guard acted on (or alerted on, with `--incident-alerts`), named by the
//! incident id its records carry. A report holds:
//!
//! - the decision: the alert record, with its rule, figures and offender;
//! - the offender's subtree as captured before it was signalled: per
//!   member pid, parent, uid, comm, program, arguments, start, state,
//!   resident and swapped memory (the table's view at the verdict, /proc's
//!   after the subtree was condemned and before the first signal);
//! - the last records of its cgroup (births, execs, exits, with per-second
//!   counts) and the readings that led there (pids.current, memory);
//! - the cgroup's files before and after (pids, memory, PSI), the action
//!   records, and how the incident ended.
//!
//! Files are 0600 in a directory only root may write, written whole
//! (rename), and bounded by count and bytes: the oldest go first. They are
//! written by a thread of their own, so enforcement never waits on a disk.
//!
//! `guard incidents` lists them and `guard incident ID` renders one
//! ([`render`]); both read the files back as [`Report`].

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    fmt::Write as _,
    fs,
    io::Write as _,
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{SyncSender, TrySendError, sync_channel},
    },
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::host::procfs::StatusDetail;
use crate::kernel::decode::Comm;

/// Where reports go unless told otherwise (the unit's `StateDirectory`).
pub const DEFAULT_DIR: &str = "/var/lib/guard/incidents";
/// Reports kept at most, by count and by MiB.
pub const DEFAULT_KEEP: usize = 200;
pub const DEFAULT_KEEP_MIB: u64 = 64;

/// Events a cgroup's history keeps, at most, and for how long.
pub const HISTORY_EVENTS: usize = 256;
pub const HISTORY_NS: u64 = 10_000_000_000;
/// Seconds of per-second counts a cgroup's history keeps.
pub const HISTORY_SECONDS: usize = 30;
/// Cgroups whose history is kept at once, at most (the least recently
/// active go first).
pub const HISTORY_CGROUPS: usize = 512;
/// Members of a subtree a report lists at most (a bomb may have
/// thousands: the first ones are the tree, the rest are counted).
pub const TREE_MEMBERS: usize = 2048;

/// One member of the offender's subtree.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TreeMember {
    pub pid: u32,
    /// The process that forked it (its lineage parent), if known.
    pub ppid: Option<u32>,
    pub comm: String,
    pub exe: Option<String>,
    pub cmdline: Option<Vec<String>>,
    /// When it started, boot ns.
    pub started_boot_ns: u64,
    /// From /proc/PID/status, captured after the subtree was condemned and
    /// before the first signal (`null`: it was gone, or not looked at).
    pub uid: Option<u32>,
    pub state: Option<String>,
    pub rss_bytes: Option<u64>,
    pub swap_bytes: Option<u64>,
    /// guard signalled it (a member born during containment is listed too,
    /// with `joined: true`).
    pub signalled: bool,
    /// Not in the subtree at the verdict: born (or found) while guard
    /// contained it.
    pub joined: bool,
    /// Gone already when the action was decided (a fork-bomb member the
    /// fork probe killed, or an exited parent whose children live on).
    pub gone: bool,
}

/// One event of a cgroup's history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryLine {
    pub boot_ns: u64,
    pub kind: String,
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
}

/// One second of a cgroup's history.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecondCounts {
    /// The second's start, boot ns.
    pub boot_ns: u64,
    pub forks: u32,
    pub execs: u32,
    pub exits: u32,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    boot_ns: u64,
    kind: &'static str,
    pid: u32,
    ppid: u32,
    comm: Comm,
}

#[derive(Default)]
struct CgroupHistory {
    events: VecDeque<Entry>,
    seconds: VecDeque<SecondCounts>,
    last_ns: u64,
}

/// The bounded per-cgroup history of events that reports quote: the last
/// [`HISTORY_EVENTS`] events of each cgroup within [`HISTORY_NS`], and
/// [`HISTORY_SECONDS`] of per-second counts. Pure: events in, lines out.
#[derive(Default)]
pub struct History {
    cgroups: HashMap<Arc<str>, CgroupHistory>,
}

impl History {
    /// Adds one event (`kind`: fork, exec, exit...) of `pid` in `cgroup`.
    pub fn push(
        &mut self,
        cgroup: &Arc<str>,
        boot_ns: u64,
        kind: &'static str,
        pid: u32,
        ppid: u32,
        comm: Comm,
    ) {
        if !self.cgroups.contains_key(cgroup) && self.cgroups.len() >= HISTORY_CGROUPS {
            // Make room: the cgroup quiet for longest goes.
            if let Some(oldest) = self
                .cgroups
                .iter()
                .min_by_key(|(_, h)| h.last_ns)
                .map(|(k, _)| k.clone())
            {
                self.cgroups.remove(&oldest);
            }
        }
        let h = self.cgroups.entry(cgroup.clone()).or_default();
        h.last_ns = h.last_ns.max(boot_ns);
        if h.events.len() >= HISTORY_EVENTS {
            h.events.pop_front();
        }
        h.events.push_back(Entry {
            boot_ns,
            kind,
            pid,
            ppid,
            comm,
        });
        let second = boot_ns - boot_ns % 1_000_000_000;
        if h.seconds.back().is_none_or(|s| s.boot_ns < second) {
            if h.seconds.len() >= HISTORY_SECONDS {
                h.seconds.pop_front();
            }
            h.seconds.push_back(SecondCounts {
                boot_ns: second,
                ..SecondCounts::default()
            });
        }
        if let Some(s) = h.seconds.back_mut() {
            match kind {
                "fork" => s.forks += 1,
                "exec" => s.execs += 1,
                "exit" => s.exits += 1,
                _ => {}
            }
        }
    }

    /// `cgroup`'s events within [`HISTORY_NS`] before `now`, oldest first,
    /// and its per-second counts.
    pub fn of(&self, cgroup: &str, now: u64) -> (Vec<HistoryLine>, Vec<SecondCounts>) {
        let Some(h) = self.cgroups.get(cgroup) else {
            return (Vec::new(), Vec::new());
        };
        let since = now.saturating_sub(HISTORY_NS);
        let lines = h
            .events
            .iter()
            .filter(|e| e.boot_ns >= since)
            .map(|e| HistoryLine {
                boot_ns: e.boot_ns,
                kind: e.kind.to_owned(),
                pid: e.pid,
                ppid: e.ppid,
                comm: e.comm.to_string(),
            })
            .collect();
        let seconds = h
            .seconds
            .iter()
            .filter(|s| {
                s.boot_ns + 1_000_000_000
                    >= now.saturating_sub(HISTORY_SECONDS as u64 * 1_000_000_000)
            })
            .cloned()
            .collect();
        (lines, seconds)
    }
}

/// One incident's report, as written and read back.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub incident: String,
    pub host: String,
    /// When the verdict was acted on (or the alert raised), RFC 3339 and
    /// boot ns; every other time in the report is boot ns.
    pub time: String,
    pub boot_ns: u64,
    /// The alert record that raised the incident (its newest, if it rose).
    pub decision: Value,
    /// The offender's cgroup, where its history and files come from.
    pub cgroup: Option<String>,
    /// The offender's subtree as captured before it was signalled, parents
    /// before children.
    pub tree: Vec<TreeMember>,
    /// Members past [`TREE_MEMBERS`], counted only.
    pub tree_omitted: usize,
    /// The cgroup's last events, oldest first, and its per-second counts.
    pub history: Vec<HistoryLine>,
    pub per_second: Vec<SecondCounts>,
    /// The readings behind the verdict: (boot ns, value) of pids.current,
    /// or of the pool's unreclaimable bytes.
    pub readings: Vec<(u64, u64)>,
    pub readings_of: Option<String>,
    /// The cgroup's files at the verdict and after the last action.
    pub cgroup_before: BTreeMap<String, String>,
    pub cgroup_after: BTreeMap<String, String>,
    /// The action records, in order (follow-ups included).
    pub actions: Vec<Value>,
    /// The `resolved` record, once the incident has ended.
    pub resolved: Option<Value>,
}

/// Whether `id` can name a report file (what `guard incident` accepts).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Checks `dir` for reports: made here (0700) if missing; else it must be a
/// directory owned by root (or this user) that nobody else may write.
pub fn trusted_dir(dir: &Path, create: bool) -> Result<()> {
    if create && !dir.exists() {
        fs::create_dir_all(dir)
            .with_context(|| format!("creating --incident-dir {}", dir.display()))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("setting {}'s mode", dir.display()))?;
    }
    let meta =
        fs::metadata(dir).with_context(|| format!("reading --incident-dir {}", dir.display()))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if !meta.is_dir() || (meta.uid() != 0 && meta.uid() != euid) || meta.mode() & 0o022 != 0 {
        bail!(
            "refusing --incident-dir {}: it must be a directory owned by root that nobody else \
             may write (chown root, chmod go-w), or pass another (or '' for none)",
            dir.display()
        );
    }
    Ok(())
}

/// The writer's side: reports handed over are written by its thread.
pub struct Reports {
    tx: SyncSender<(String, Vec<u8>)>,
    thread: std::thread::JoinHandle<()>,
    /// Reports not written: the queue was full, or the write failed.
    pub lost: Arc<AtomicU64>,
    pub dir: PathBuf,
}

/// Reports waiting to be written, at most.
const QUEUE: usize = 64;

impl Reports {
    /// Starts the writer for `dir` (checked, made if missing).
    pub fn start(dir: &Path, keep: usize, keep_bytes: u64) -> Result<Self> {
        trusted_dir(dir, true)?;
        let (tx, rx) = sync_channel::<(String, Vec<u8>)>(QUEUE);
        let lost = Arc::new(AtomicU64::new(0));
        let dir_owned = dir.to_owned();
        let failed = lost.clone();
        let thread = std::thread::Builder::new()
            .name("guard-reports".into())
            .spawn(move || {
                for (id, bytes) in rx {
                    if let Err(err) = write_one(&dir_owned, &id, &bytes) {
                        failed.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!("incident report {id} not written: {err:#}");
                        continue;
                    }
                    prune(&dir_owned, keep, keep_bytes);
                }
            })
            .context("starting the incident report writer")?;
        Ok(Self {
            tx,
            thread,
            lost,
            dir: dir.to_owned(),
        })
    }

    /// Writes what is queued, then ends the writer (the agent stops).
    pub fn close(self) {
        drop(self.tx);
        let _ = self.thread.join();
    }

    /// Hands `report` to the writer; never waits.
    pub fn write(&self, report: &Report) {
        let Ok(bytes) = serde_json::to_vec_pretty(report) else {
            self.lost.fetch_add(1, Ordering::Relaxed);
            return;
        };
        match self.tx.try_send((report.incident.clone(), bytes)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.lost.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn write_one(dir: &Path, id: &str, bytes: &[u8]) -> Result<()> {
    if !valid_id(id) {
        bail!("not a valid incident id");
    }
    let tmp = dir.join(format!(".{id}.json.tmp"));
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(bytes)?;
    file.write_all(b"\n")?;
    drop(file);
    fs::rename(&tmp, dir.join(format!("{id}.json")))?;
    Ok(())
}

/// The reports in `dir`: (id, modified, bytes), oldest first.
fn listing(dir: &Path) -> Vec<(String, std::time::SystemTime, u64)> {
    let mut files: Vec<_> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let id = name.strip_suffix(".json")?.to_owned();
            let meta = e.metadata().ok()?;
            let modified = meta.modified().ok()?;
            (valid_id(&id) && meta.is_file()).then_some((id, modified, meta.len()))
        })
        .collect();
    files.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(&b.0)));
    files
}

/// Removes the oldest reports past `keep` files or `keep_bytes`.
fn prune(dir: &Path, keep: usize, keep_bytes: u64) {
    let files = listing(dir);
    let mut total: u64 = files.iter().map(|f| f.2).sum();
    let mut count = files.len();
    for (id, _, len) in files {
        if count <= keep.max(1) && total <= keep_bytes {
            break;
        }
        if fs::remove_file(dir.join(format!("{id}.json"))).is_ok() {
            count -= 1;
            total = total.saturating_sub(len);
        }
    }
}

/// Reads one report back.
pub fn read(dir: &Path, id: &str) -> Result<Report> {
    if !valid_id(id) {
        bail!("{id:?} is not an incident id (guard incidents lists them)");
    }
    let path = dir.join(format!("{id}.json"));
    let text = fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {} (guard incidents lists the reports in {})",
            path.display(),
            dir.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a report", path.display()))
}

/// Every report in `dir`, oldest first (unreadable files are skipped).
pub fn read_all(dir: &Path) -> Result<Vec<Report>> {
    trusted_dir(dir, false)?;
    Ok(listing(dir)
        .into_iter()
        .filter_map(|(id, _, _)| read(dir, &id).ok())
        .collect())
}

fn field<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.as_object()?.get(key)
}

fn text_of(v: &Value, key: &str) -> String {
    match field(v, key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".to_owned(),
        Some(other) => other.to_string(),
    }
}

/// One line for `guard incidents`: id, time, detector/rule, action and its
/// end, offender.
pub fn summary_line(r: &Report) -> String {
    let d = &r.decision;
    let offender = field(d, "offender");
    let who = offender
        .map(|o| format!("{} {}", text_of(o, "pid"), text_of(o, "comm")))
        .unwrap_or_else(|| "-".to_owned());
    let action = r
        .actions
        .last()
        .map(|a| {
            let outcome = field(a, "outcome");
            let end = match outcome.and_then(|o| field(o, "contained")) {
                Some(Value::Bool(true)) => "contained",
                Some(Value::Bool(false)) => "not contained",
                _ => "",
            };
            format!("{} {end}", text_of(a, "action")).trim().to_owned()
        })
        .unwrap_or_else(|| "alert only".to_owned());
    format!(
        "{:<24} {:<20} {:<9} {:<22} {:<22} {:>5}  {}",
        r.incident,
        r.time.get(..19).unwrap_or(&r.time),
        text_of(d, "detector"),
        text_of(d, "rule"),
        action,
        r.tree.len() + r.tree_omitted,
        who
    )
}

/// The header of `guard incidents`.
pub fn summary_header() -> String {
    format!(
        "{:<24} {:<20} {:<9} {:<22} {:<22} {:>5}  {}",
        "INCIDENT", "TIME (UTC)", "DETECTOR", "RULE", "ACTION", "TREE", "OFFENDER"
    )
}

fn human_bytes(b: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if b >= 1 << 30 {
        format!("{:.1} GiB", b as f64 / (MIB * 1024.0))
    } else {
        format!("{:.1} MiB", b as f64 / MIB)
    }
}

fn seconds_from(at: u64, zero: u64) -> String {
    let d = at as f64 / 1e9 - zero as f64 / 1e9;
    format!("{d:+8.3} s")
}

/// Scalars of a record, `key=value`, in one line (nested objects left
/// out: they are shown on their own).
fn figures(v: &Value, skip: &[&str]) -> String {
    let Some(o) = v.as_object() else {
        return String::new();
    };
    o.iter()
        .filter(|(k, v)| {
            !skip.contains(&k.as_str()) && !v.is_object() && !v.is_array() && !v.is_null()
        })
        .map(|(k, v)| match v {
            Value::String(s) => format!("{k}={s}"),
            other => format!("{k}={other}"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A report as text: the decision, the tree, the timeline, the figures.
pub fn render(r: &Report) -> String {
    let mut s = String::new();
    let d = &r.decision;
    let _ = writeln!(s, "incident {} on {} at {}", r.incident, r.host, r.time);
    let _ = writeln!(
        s,
        "  {} / {} ({}), cgroup {}",
        text_of(d, "detector"),
        text_of(d, "rule"),
        text_of(d, "severity"),
        r.cgroup.as_deref().unwrap_or("-")
    );
    let _ = writeln!(
        s,
        "\ndecision\n  {}",
        figures(d, &["kind", "time", "host", "boot_ns"])
    );
    if let Some(o) = field(d, "offender") {
        let _ = writeln!(s, "  offender: {}", figures(o, &[]));
    }
    let _ = writeln!(
        s,
        "\nsubtree as captured before signalling ({} members{})",
        r.tree.len() + r.tree_omitted,
        if r.tree_omitted > 0 {
            format!(", {} not listed", r.tree_omitted)
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        s,
        "  {:<22} {:>6} {:>5} {:>10} {:>10} {:>9}  COMMAND",
        "PID (tree)", "UID", "STATE", "RSS", "SWAP", "STARTED"
    );
    for (m, depth) in tree_order(&r.tree) {
        let pid = format!("{}{}", "  ".repeat(depth.min(8)), m.pid);
        let command = m
            .cmdline
            .as_ref()
            .filter(|c| !c.is_empty())
            .map(|c| c.join(" "))
            .or_else(|| m.exe.clone())
            .unwrap_or_else(|| m.comm.clone());
        let mut marks = String::new();
        if m.signalled {
            marks.push_str(" [signalled]");
        }
        if m.joined {
            marks.push_str(" [born during containment]");
        }
        if m.gone {
            marks.push_str(" [gone before the action]");
        }
        let _ = writeln!(
            s,
            "  {:<22} {:>6} {:>5} {:>10} {:>10} {:>9}  {} ({}){}",
            pid,
            m.uid.map_or("-".to_owned(), |u| u.to_string()),
            m.state.as_deref().unwrap_or("-"),
            m.rss_bytes.map_or("-".to_owned(), human_bytes),
            m.swap_bytes.map_or("-".to_owned(), human_bytes),
            seconds_from(m.started_boot_ns, r.boot_ns).trim(),
            command,
            m.comm,
            marks
        );
    }
    if !r.per_second.is_empty() {
        let _ = writeln!(
            s,
            "\nper second in {} (before the verdict)",
            r.cgroup.as_deref().unwrap_or("-")
        );
        for c in &r.per_second {
            let _ = writeln!(
                s,
                "  {}  {:>6} forks {:>6} execs {:>6} exits",
                seconds_from(c.boot_ns, r.boot_ns),
                c.forks,
                c.execs,
                c.exits
            );
        }
    }
    if !r.history.is_empty() {
        let _ = writeln!(
            s,
            "\nlast events ({}, up to {})",
            r.history.len(),
            HISTORY_EVENTS
        );
        for h in &r.history {
            let _ = writeln!(
                s,
                "  {}  {:<6} {} ({}) parent {}",
                seconds_from(h.boot_ns, r.boot_ns),
                h.kind,
                h.pid,
                h.comm,
                h.ppid
            );
        }
    }
    if !r.readings.is_empty() {
        let _ = writeln!(
            s,
            "\nreadings of {}",
            r.readings_of.as_deref().unwrap_or("-")
        );
        let bytes = r
            .readings_of
            .as_deref()
            .is_some_and(|o| o.ends_with("bytes)"));
        for &(at, v) in &r.readings {
            let value = if bytes { human_bytes(v) } else { v.to_string() };
            let _ = writeln!(s, "  {}  {value}", seconds_from(at, r.boot_ns));
        }
    }
    for (title, files) in [
        ("at the verdict", &r.cgroup_before),
        ("after", &r.cgroup_after),
    ] {
        if files.is_empty() {
            continue;
        }
        let _ = writeln!(s, "\ncgroup files {title}");
        for (name, text) in files {
            let one: Vec<&str> = text.lines().take(12).collect();
            let _ = writeln!(s, "  {name}: {}", one.join(" | "));
        }
    }
    for a in &r.actions {
        let _ = writeln!(
            s,
            "\naction {}",
            figures(a, &["kind", "host", "boot_ns", "incident"])
        );
        if let Some(o) = field(a, "outcome") {
            let _ = writeln!(s, "  outcome: {}", figures(o, &[]));
        }
    }
    if let Some(res) = &r.resolved {
        let _ = writeln!(
            s,
            "\nresolved {}",
            figures(res, &["kind", "host", "boot_ns", "incident"])
        );
    }
    s
}

/// The tree's members in display order (parents before their children,
/// siblings by pid) with their depth.
fn tree_order(tree: &[TreeMember]) -> Vec<(&TreeMember, usize)> {
    let pids: std::collections::HashSet<u32> = tree.iter().map(|m| m.pid).collect();
    let mut children: BTreeMap<u32, Vec<&TreeMember>> = BTreeMap::new();
    let mut roots = Vec::new();
    for m in tree {
        match m.ppid.filter(|p| pids.contains(p) && *p != m.pid) {
            Some(p) => children.entry(p).or_default().push(m),
            None => roots.push(m),
        }
    }
    let mut out = Vec::with_capacity(tree.len());
    let mut stack: Vec<(&TreeMember, usize)> = roots.into_iter().rev().map(|m| (m, 0)).collect();
    let mut seen = std::collections::HashSet::new();
    while let Some((m, depth)) = stack.pop() {
        if !seen.insert(m.pid) {
            continue;
        }
        out.push((m, depth));
        if let Some(kids) = children.get(&m.pid) {
            for k in kids.iter().rev() {
                stack.push((k, depth + 1));
            }
        }
    }
    // Members on a cycle of reused pids: listed flat.
    for m in tree {
        if !seen.contains(&m.pid) {
            out.push((m, 0));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comm(s: &str) -> Comm {
        Comm::from_str_lossy(s)
    }

    #[test]
    fn history_is_bounded_per_cgroup_and_counts_each_second() {
        let mut h = History::default();
        let cg: Arc<str> = Arc::from("/sys/fs/cgroup/pids/t");
        for i in 0..(HISTORY_EVENTS as u64 + 10) {
            h.push(
                &cg,
                5_000_000_000 + i * 1_000_000,
                "fork",
                100 + i as u32,
                1,
                comm("bash"),
            );
        }
        h.push(&cg, 6_200_000_000, "exit", 7, 1, comm("bash"));
        let (lines, seconds) = h.of(&cg, 6_300_000_000);
        assert_eq!(lines.len(), HISTORY_EVENTS);
        assert_eq!(lines.last().map(|l| l.kind.as_str()), Some("exit"));
        assert_eq!(lines[0].pid, 111, "the oldest were dropped");
        assert_eq!(seconds.len(), 2);
        assert_eq!((seconds[0].forks, seconds[0].exits), (266, 0));
        assert_eq!((seconds[1].forks, seconds[1].exits), (0, 1));
        // Older than HISTORY_NS: not quoted.
        let (lines, _) = h.of(&cg, 6_300_000_000 + HISTORY_NS);
        assert_eq!(lines.len(), 0);
    }

    #[test]
    fn the_quietest_cgroup_makes_room() {
        let mut h = History::default();
        for i in 0..=HISTORY_CGROUPS as u64 {
            let cg: Arc<str> = Arc::from(format!("/c{i}"));
            h.push(&cg, 1_000 + i, "fork", 1, 0, comm("x"));
        }
        assert_eq!(h.cgroups.len(), HISTORY_CGROUPS);
        assert!(!h.cgroups.contains_key("/c0"));
        assert!(h.cgroups.contains_key(&*format!("/c{HISTORY_CGROUPS}")));
    }

    #[test]
    fn ids_that_could_leave_the_directory_are_refused() {
        assert!(valid_id("20261204T150000Z-3"));
        for bad in ["", "../x", "a/b", ".hidden", "a b", &"x".repeat(200)] {
            assert!(!valid_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_tree_lists_parents_before_children() {
        let m = |pid, ppid| TreeMember {
            pid,
            ppid,
            comm: "b".into(),
            ..TreeMember::default()
        };
        let tree = vec![
            m(12, Some(11)),
            m(10, Some(1)),
            m(11, Some(10)),
            m(13, Some(10)),
        ];
        let order: Vec<(u32, usize)> = tree_order(&tree)
            .into_iter()
            .map(|(m, d)| (m.pid, d))
            .collect();
        assert_eq!(order, vec![(10, 0), (11, 1), (12, 2), (13, 1)]);
    }

    #[test]
    fn reports_are_written_0600_and_the_oldest_go_past_the_bounds() {
        let dir = std::env::temp_dir().join(format!("guard-reports-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let reports = Reports::start(&dir, 3, 1 << 20).expect("writer");
        for i in 0..5 {
            reports.write(&Report {
                incident: format!("T-{i}"),
                ..Report::default()
            });
            // mtimes order the files: keep them apart.
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while listing(&dir).last().map(|l| l.0.as_str()) != Some("T-4")
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let ids: Vec<String> = listing(&dir).into_iter().map(|l| l.0).collect();
        assert_eq!(ids, vec!["T-2", "T-3", "T-4"]);
        let mode = fs::metadata(dir.join("T-4.json")).expect("report").mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(read(&dir, "T-3").expect("read back").incident, "T-3");
        let _ = fs::remove_dir_all(&dir);
    }
}
