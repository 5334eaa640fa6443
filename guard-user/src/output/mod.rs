//! The stdout stream: one line per record, aligned text (colour only on a
//! TTY) or NDJSON. The JSON schema is documented in the README; every object
//! has `kind`, `time` (RFC 3339, UTC, nanoseconds) and `boot_ns`
//! (CLOCK_BOOTTIME nanoseconds, the kernel's own timestamp).
//!
//! - `record`, `events`: the typed records; `schema`: derived from them.
//! - `incident`: the lifecycle that ties one runaway's records together.
//! - `report`: incident reports on disk (and reading them back).
//! - `stream`: the `--socket` stream of records and snapshots.
//! - `metrics`: Prometheus; `text`, `json`, `writer`: the stdout writers.

pub mod events;
pub mod incident;
mod json;
pub mod metrics;
pub mod record;
pub mod report;
pub mod schema;
pub mod stream;
pub mod text;
mod writer;

use std::{
    io::{self, Write},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use guard_common::EventKind;

use self::record::{ActionResult, Counted, Record, Rule};
use self::text::Escaped;
pub use self::{
    json::JsonObject,
    writer::{EVENT_BACKLOG, RECORD_BACKLOG, ReopeningFile, ThreadedStdout},
};
pub use crate::host::clock::WallClock;
use crate::{
    detect::switches::Detector,
    kernel::decode::{Comm, Event, ExitStatus},
    respond::policy::ActionKind,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text { color: bool },
    Json,
}

/// What the process table adds to an event.
#[derive(Clone, Copy, Debug, Default)]
pub struct Context<'a> {
    pub comm: Option<Comm>,
    pub ppid: Option<u32>,
    pub parent_comm: Option<Comm>,
    pub cgroup: Option<&'a str>,
    /// How long the process had lived (exit events).
    pub age_ns: Option<u64>,
    /// hung_task events: how long before khungtaskd guard reported the same
    /// task as blocked.
    pub lead_ns: Option<u64>,
    /// oom_kill events: the victim's memory cgroup (its memory-hierarchy
    /// directory, whatever hierarchy `cgroup` shows).
    pub memory_cgroup: Option<&'a str>,
}

pub fn signal_name(signal: i32) -> &'static str {
    const NAMES: [&str; 32] = [
        "0",
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    usize::try_from(signal)
        .ok()
        .and_then(|i| NAMES.get(i))
        .copied()
        .unwrap_or("SIGRT")
}

/// Alerts and actions counted by their labels.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// (detector, rule) → alerts.
    pub alerts: std::collections::BTreeMap<(Detector, Rule), u64>,
    /// (detector, action, how it ended) → actions.
    pub actions: std::collections::BTreeMap<(Detector, ActionKind, ActionResult), u64>,
}

impl Tally {
    fn count(&mut self, counted: Counted) {
        match counted {
            Counted::Alert(detector, rule) => {
                *self.alerts.entry((detector, rule)).or_default() += 1;
            }
            Counted::Action(detector, action, result) => {
                *self.actions.entry((detector, action, result)).or_default() += 1;
            }
        }
    }
}

/// Writes records to `W` in one format.
pub struct Output<W: Write> {
    out: W,
    format: Format,
    clock: WallClock,
    line: Vec<u8>,
    header_done: bool,
    /// Bytes waiting to be written, when `W` queues them.
    backlog: Option<Arc<AtomicUsize>>,
    /// The writer failed (stdout's reader went away, say): nothing is
    /// written any more, and everything is counted as dropped. The error is
    /// kept for the agent to judge; writing never fails the pipeline.
    failure: Option<io::Error>,
    /// Event lines dropped: too much output was waiting, or the writer is
    /// gone.
    pub dropped: u64,
    /// Event lines not formatted: the agent was over its CPU limit.
    pub shed: u64,
    /// Alerts by (detector, rule), actions by (detector, action, outcome):
    /// every one decided, written or not (for metrics).
    pub tally: Tally,
    /// `--on-alert`: run per alert and action.
    hooks: Option<crate::respond::hook::Hooks>,
    /// Event lines are being shed (see `agent::budget`).
    shedding: bool,
    /// Records other than events (alerts, actions...) dropped for the same
    /// reasons.
    pub records_dropped: u64,
    /// Written since the last flush: anything, and records other than
    /// events (those are not kept waiting; see `flush_records`).
    unflushed: bool,
    records_unflushed: bool,
    /// The host every JSON line and hook names (`--hostname`).
    host: String,
    /// `--socket`: records go to its clients too, as JSON.
    stream: Option<stream::Stream>,
}

impl<W: Write> Output<W> {
    pub fn new(out: W, format: Format, clock: WallClock) -> Self {
        Self {
            out,
            format,
            clock,
            line: Vec::with_capacity(512),
            header_done: false,
            backlog: None,
            failure: None,
            dropped: 0,
            shed: 0,
            tally: Tally::default(),
            hooks: None,
            shedding: false,
            unflushed: false,
            records_unflushed: false,
            records_dropped: 0,
            host: crate::host::procfs::hostname(),
            stream: None,
        }
    }

    /// Hands every record to `stream`'s clients too (as JSON, whatever the
    /// format of stdout).
    pub fn set_stream(&mut self, stream: stream::Stream) {
        self.stream = Some(stream);
    }

    /// The stream records go to, if any.
    pub fn stream(&self) -> Option<&stream::Stream> {
        self.stream.as_ref()
    }

    /// Names the host `name` in every JSON line and hook (instead of the
    /// kernel's host name).
    pub fn with_host_name(mut self, name: &str) -> Self {
        name.clone_into(&mut self.host);
        self
    }

    pub fn host_name(&self) -> &str {
        &self.host
    }

    /// Drop event lines while more than [`EVENT_BACKLOG`] bytes wait in
    /// `backlog`, and every record while more than [`RECORD_BACKLOG`] do
    /// (each counted).
    pub fn with_backlog(mut self, backlog: Arc<AtomicUsize>) -> Self {
        self.backlog = Some(backlog);
        self
    }

    /// Why the writer failed, once it has: from then on nothing is written
    /// and everything is counted as dropped.
    pub fn failure(&self) -> Option<&io::Error> {
        self.failure.as_ref()
    }

    /// Takes a write's result: an error ends writing for good.
    fn settle(&mut self, result: io::Result<()>) -> io::Result<()> {
        if let Err(err) = result
            && self.failure.is_none()
        {
            self.failure = Some(err);
        }
        Ok(())
    }

    /// Whether more than `limit` bytes wait, or the writer failed.
    fn over(&self, limit: usize) -> bool {
        self.failure.is_some()
            || self
                .backlog
                .as_ref()
                .is_some_and(|b| b.load(Ordering::Relaxed) > limit)
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.unflushed = false;
        self.records_unflushed = false;
        if self.failure.is_some() {
            return Ok(());
        }
        let result = self.out.flush();
        self.settle(result)
    }

    /// Flushes when a record other than an event (an alert, an action) was
    /// written since the last flush; event lines may wait for the next
    /// [`Output::flush`] (the agent flushes them within a few ms, so that
    /// a stream of events costs one write per batch of batches).
    pub fn flush_records(&mut self) -> io::Result<()> {
        if self.records_unflushed {
            self.flush()
        } else {
            Ok(())
        }
    }

    /// Runs `hooks` for every alert and action from now on.
    pub fn with_hooks(mut self, hooks: crate::respond::hook::Hooks) -> Self {
        self.hooks = Some(hooks);
        self
    }

    /// What became of the hooks, when there are any.
    pub fn hook_counts(&self) -> Option<std::sync::Arc<crate::respond::hook::HookCounts>> {
        self.hooks.as_ref().map(|h| h.counts.clone())
    }

    /// Sheds event lines (not records) while `on`.
    pub fn set_shedding(&mut self, on: bool) {
        self.shedding = on;
    }

    /// Whether anything was written since the last flush.
    pub fn unflushed(&self) -> bool {
        self.unflushed
    }

    pub fn into_inner(self) -> W {
        self.out
    }

    /// What was written so far, taken out (tests read records back).
    #[cfg(test)]
    pub fn take_written(&mut self) -> W
    where
        W: Default,
    {
        std::mem::take(&mut self.out)
    }

    pub fn time_rfc3339(&self, boot_ns: u64) -> String {
        humantime::format_rfc3339_nanos(self.clock.to_system_time(boot_ns)).to_string()
    }

    /// One event with what the process table knows about its subject.
    ///
    /// Stream events (forks, execs, exits...) are shed while the agent is
    /// over its CPU limit and dropped past [`EVENT_BACKLOG`]; the rare
    /// ones that say something happened to the host (see [`notable`]) are
    /// kept like records: never shed, dropped only past
    /// [`RECORD_BACKLOG`], and flushed at once.
    pub fn event(&mut self, event: &Event, ctx: &Context<'_>) -> io::Result<()> {
        let notable = notable(event);
        if self.shedding && !notable {
            self.shed += 1;
            return Ok(());
        }
        if self.over(if notable {
            RECORD_BACKLOG
        } else {
            EVENT_BACKLOG
        }) {
            self.dropped += 1;
            return Ok(());
        }
        self.records_unflushed |= notable;
        self.line.clear();
        match self.format {
            Format::Json => self.json_event(event, ctx),
            Format::Text { color } => {
                if !self.header_done {
                    self.header_done = true;
                    let _ = writeln!(
                        self.line,
                        "{:<15}  {:<13} {:>7} {:>7}  {:<16} {:<40} DETAILS",
                        "TIME(UTC)", "EVENT", "PID", "PPID", "COMM", "CGROUP"
                    );
                }
                self.text_event(event, ctx, color);
            }
        }
        self.unflushed = true;
        let result = self.out.write_all(&self.line);
        self.settle(result)
    }

    /// A record that is not a kernel event (see `record`): JSON in the
    /// type's field order, or `# kind: k=v ...` in text. Alerts and actions
    /// are counted and handed to the hooks.
    /// Hands `record` to the `--socket` stream's clients only (not stdout,
    /// not hooks, not counted): the `snapshot` records.
    pub fn publish<R: Record>(&self, record: &R) {
        let Some(stream) = self.stream.as_ref().filter(|s| s.listening()) else {
            return;
        };
        let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(record) else {
            return;
        };
        let line = self.json_line(R::KIND.name(), WallClock::boot_ns_now(), fields.iter());
        stream.publish(&line);
    }

    /// One record as a JSON line (for the stream, whatever stdout's format).
    fn json_line<'a>(
        &self,
        kind: &str,
        now: u64,
        fields: impl Iterator<Item = (&'a String, &'a serde_json::Value)>,
    ) -> String {
        let mut line = Vec::with_capacity(1024);
        let time = self.time_rfc3339(now);
        let mut o = JsonObject::new(&mut line);
        o.str("kind", kind)
            .str("time", &time)
            .num("boot_ns", now)
            .str("host", &self.host);
        for (k, v) in fields {
            o.raw(k, &v.to_string());
        }
        o.finish();
        String::from_utf8_lossy(&line).into_owned()
    }

    pub fn record<R: Record>(&mut self, record: &R) -> io::Result<()> {
        let fields = match serde_json::to_value(record) {
            Ok(serde_json::Value::Object(map)) => map,
            Ok(other) => {
                return Err(io::Error::other(format!(
                    "a {} record is not an object: {other}",
                    R::KIND.name()
                )));
            }
            Err(e) => return Err(io::Error::other(e)),
        };
        if let Some(counted) = record.counted() {
            self.tally.count(counted);
        }
        let hook = record.hook();
        self.write_record(R::KIND.name(), fields, hook)
    }

    fn write_record(
        &mut self,
        kind: &str,
        fields: serde_json::Map<String, serde_json::Value>,
        hook: Option<crate::respond::hook::HookSubject>,
    ) -> io::Result<()> {
        // Text escapes names that are not UTF-8 itself (`\xNN`); JSON and
        // hooks get them lossy with a `_hex` twin.
        let text_fields: Vec<(String, serde_json::Value)> = fields.into_iter().collect();
        let twinned;
        let fields = if text_fields.iter().any(|(_, v)| holds_raw(v)) {
            twinned = twin_raw(&text_fields);
            twinned.as_slice()
        } else {
            text_fields.as_slice()
        };
        let now = WallClock::boot_ns_now();
        if let (Some(hooks), Some(subject)) = (&self.hooks, hook) {
            let time = self.time_rfc3339(now);
            let mut record = serde_json::Map::new();
            record.insert("kind".into(), kind.into());
            record.insert("time".into(), time.clone().into());
            record.insert("boot_ns".into(), now.into());
            record.insert("host".into(), self.host.clone().into());
            for (k, v) in fields {
                record.insert(k.clone(), v.clone());
            }
            let env = crate::respond::hook::environment(kind, &time, &self.host, &subject);
            hooks.fire(record.into(), env, now);
        }
        // One JSON line serves stdout (`--json`) and the stream.
        let to_stream = self
            .stream
            .as_ref()
            .is_some_and(|s| s.listening() || kind == "start");
        let json = (to_stream || self.format == Format::Json)
            .then(|| self.json_line(kind, now, fields.iter().map(|(k, v)| (k, v))));
        if let (Some(stream), Some(line)) = (self.stream.as_ref().filter(|_| to_stream), &json) {
            if kind == "start" {
                stream.set_hello(line);
            }
            stream.publish(line);
        }
        if self.over(RECORD_BACKLOG) {
            self.records_dropped += 1;
            return Ok(());
        }
        self.line.clear();
        match self.format {
            Format::Json => self
                .line
                .extend_from_slice(json.as_deref().unwrap_or_default().as_bytes()),
            Format::Text { .. } => {
                let _ = write!(self.line, "# {kind}:");
                for (k, v) in &text_fields {
                    let _ = match v {
                        serde_json::Value::String(s) => {
                            write!(self.line, " {k}={}", Escaped(s.as_bytes()))
                        }
                        other => write!(self.line, " {k}={}", text::nested_json(other)),
                    };
                }
                self.line.push(b'\n');
            }
        }
        self.unflushed = true;
        self.records_unflushed = true;
        let result = self.out.write_all(&self.line);
        self.settle(result)
    }

    fn json_event(&mut self, event: &Event, ctx: &Context<'_>) {
        let time = humantime::format_rfc3339_nanos(self.clock.to_system_time(event.boot_ns()));
        let mut o = JsonObject::new(&mut self.line);
        o.str("kind", event.kind().name())
            .plain("time", time)
            .num("boot_ns", event.boot_ns())
            .str("host", &self.host);
        let (pid, tgid) = subject_ids(event);
        o.num("pid", pid).num("tgid", tgid);
        o.comm("comm", subject_comm(event, ctx));
        o.opt_num("ppid", ctx.ppid)
            .comm("parent_comm", ctx.parent_comm)
            .opt_str("cgroup", ctx.cgroup);
        if let Some(pod) = ctx.cgroup.and_then(crate::host::kube::pod_of) {
            o.str("pod_uid", &pod.uid)
                .opt_str("container_id", pod.container_id.as_deref())
                .str("qos", pod.qos.name());
        }
        match event {
            Event::Fork(f) => {
                o.num("parent_pid", f.parent_pid)
                    .num("parent_tgid", f.parent_tgid);
                o.bool("thread", f.is_thread())
                    .bool("kernel_thread", f.kernel_thread);
            }
            Event::Exec(e) => {
                o.bytes("filename", &e.filename)
                    .bool("filename_truncated", e.filename_truncated)
                    .args("cmdline", e.cmdline.as_ref())
                    .bool("cmdline_truncated", e.cmdline_truncated)
                    .num("old_pid", e.old_pid);
            }
            Event::Exit(e) => {
                match e.status {
                    ExitStatus::Exited(code) => {
                        o.num("exit_code", code)
                            .raw("signal", "null")
                            .bool("core_dumped", false);
                    }
                    ExitStatus::Signaled {
                        signal,
                        core_dumped,
                    } => {
                        o.raw("exit_code", "null")
                            .str("signal", signal_name(signal))
                            .bool("core_dumped", core_dumped);
                    }
                }
                o.bool("group_dead", e.group_dead)
                    .bool("kernel_thread", e.kernel_thread)
                    .opt_num("age_ns", ctx.age_ns);
            }
            Event::OomKill(k) => {
                o.opt_num("total_vm_kb", k.total_vm_kb)
                    .opt_num("anon_rss_kb", k.anon_rss_kb)
                    .opt_num("file_rss_kb", k.file_rss_kb)
                    .opt_num("shmem_rss_kb", k.shmem_rss_kb)
                    .opt_num("pgtables_kb", k.pgtables_kb)
                    .opt_num("oom_score_adj", k.oom_score_adj)
                    .opt_num("uid", k.uid)
                    .num("trigger_pid", k.trigger_pid)
                    .num("trigger_tgid", k.trigger_tgid)
                    .opt_str("memory_cgroup", ctx.memory_cgroup);
            }
            Event::HungTask(_) => {
                o.opt_num("guard_lead_ms", ctx.lead_ns.map(|ns| ns / 1_000_000));
            }
            Event::CgroupAttach(a) => {
                o.num("hierarchy_id", a.hierarchy_id).str("path", &a.path);
            }
            Event::Rss(r) => {
                o.num("step", r.step)
                    .opt_num("previous_step", r.previous_step)
                    .num("rss_bytes", r.rss_bytes())
                    .num("anon_bytes", r.anon_bytes)
                    .num("file_bytes", r.file_bytes)
                    .num("shmem_bytes", r.shmem_bytes)
                    .num("swap_bytes", r.swap_bytes);
            }
            Event::ReclaimStall(r) => {
                o.num("stall_us", r.stall_ns / 1000)
                    .num("nr_reclaimed", r.nr_reclaimed);
            }
            Event::Condemned(c) => {
                o.num("tag", c.tag)
                    .opt_num("root_tgid", c.root_tgid)
                    .num("births", c.births)
                    .num("growth", c.growth)
                    .num("deep_births", c.deep_births)
                    .num("window_ms", c.window_ns / 1_000_000)
                    .str("signal", signal_name(c.signal));
            }
            Event::Unblocked(u) => {
                o.num("since_ns", u.since_ns)
                    .num("blocked_ms", u.blocked_ns / 1_000_000)
                    .bool("killable", u.killable);
            }
        }
        o.finish();
    }

    fn text_event(&mut self, event: &Event, ctx: &Context<'_>, color: bool) {
        let time = self.time_rfc3339(event.boot_ns());
        // "2026-11-22T07:01:02.123456789Z" → "07:01:02.123456"
        let clock = time.get(11..26).unwrap_or(&time);
        let (pid, tgid) = subject_ids(event);
        let kind = event.kind();
        let label = match event {
            Event::Fork(f) if f.is_thread() => "fork(thread)",
            Event::Exit(e) if e.is_thread_exit() => "exit(thread)",
            _ => kind.name(),
        };
        let failed = matches!(event, Event::Exit(e) if e.status.is_failure());
        let paint = match kind {
            _ if !color => "",
            EventKind::OomKill => "\x1b[1;31m",
            EventKind::HungTask => "\x1b[1;33m",
            EventKind::Exit if failed => "\x1b[31m",
            EventKind::Fork => "\x1b[32m",
            EventKind::Exec => "\x1b[36m",
            _ => "",
        };
        let reset = if paint.is_empty() { "" } else { "\x1b[0m" };
        let comm = subject_comm(event, ctx);
        let comm = Escaped(comm.as_ref().map_or(b"?", |c| c.as_bytes()));
        let ppid = ctx.ppid.map_or_else(|| "?".to_owned(), |p| p.to_string());
        let shown_pid = if event.is_thread_level() { pid } else { tgid };
        let _ = write!(
            self.line,
            "{clock:<15}  {paint}{label:<13}{reset} {shown_pid:>7} {ppid:>7}  {comm:<16} {:<40} ",
            Escaped(ctx.cgroup.unwrap_or("?").as_bytes())
        );
        let _ = match event {
            Event::Fork(f) => write!(
                self.line,
                "parent={}({}){}",
                f.parent_tgid,
                Escaped(f.parent_comm.as_bytes()),
                if f.is_thread() {
                    format!(" tid={}", f.child_pid)
                } else {
                    String::new()
                }
            ),
            Event::Exec(e) => write!(
                self.line,
                "{}{}",
                Escaped(&e.filename),
                if e.filename_truncated { "…" } else { "" }
            ),
            Event::Exit(e) => {
                let how = match e.status {
                    ExitStatus::Exited(code) => format!("code={code}"),
                    ExitStatus::Signaled {
                        signal,
                        core_dumped,
                    } => {
                        format!(
                            "signal={}{}",
                            signal_name(signal),
                            if core_dumped { " (core dumped)" } else { "" }
                        )
                    }
                };
                let age = ctx
                    .age_ns
                    .map(|ns| format!(" age={}", human_duration(ns)))
                    .unwrap_or_default();
                write!(self.line, "{how}{age}")
            }
            Event::OomKill(k) => {
                let kb = |v: Option<u64>| v.map_or_else(|| "?".to_owned(), |v| format!("{v}kB"));
                write!(
                    self.line,
                    "anon_rss={} file_rss={} shmem_rss={} total_vm={} oom_score_adj={} by={}",
                    kb(k.anon_rss_kb),
                    kb(k.file_rss_kb),
                    kb(k.shmem_rss_kb),
                    kb(k.total_vm_kb),
                    k.oom_score_adj
                        .map_or_else(|| "?".to_owned(), |v| v.to_string()),
                    k.trigger_tgid
                )
            }
            Event::HungTask(h) => write!(
                self.line,
                "blocked past hung_task_timeout_secs (tid {}){}",
                h.pid,
                ctx.lead_ns
                    .map(|ns| format!(", reported by guard {} earlier", human_duration(ns)))
                    .unwrap_or_default()
            ),
            Event::Rss(r) => write!(
                self.line,
                "rss {} MiB (anon {} MiB, file {} MiB, shmem {} MiB), step {}",
                r.rss_bytes() >> 20,
                r.anon_bytes >> 20,
                r.file_bytes >> 20,
                r.shmem_bytes >> 20,
                r.step
            ),
            Event::ReclaimStall(r) => write!(
                self.line,
                "stalled {} in memory reclaim ({} pages reclaimed)",
                human_duration(r.stall_ns),
                r.nr_reclaimed
            ),
            Event::Condemned(c) => write!(
                self.line,
                "fork probe condemned subtree {}: {} births ({} self-copies), live +{} in {}; \
                 members that fork get {}",
                c.root_tgid
                    .map_or_else(|| format!("tag {}", c.tag), |r| format!("of {r}")),
                c.births,
                c.deep_births,
                c.growth,
                human_duration(c.window_ns),
                signal_name(c.signal)
            ),
            Event::Unblocked(u) => write!(
                self.line,
                "runs again after {} in D state (tid {}{})",
                human_duration(u.blocked_ns),
                u.pid,
                if u.killable { ", killable" } else { "" }
            ),
            Event::CgroupAttach(a) => write!(
                self.line,
                "moved (hierarchy {} path {})",
                a.hierarchy_id,
                Escaped(a.path.as_bytes())
            ),
        };
        self.line.push(b'\n');
    }
}

/// (pid, tgid) of the task an event is about.
pub fn subject_ids(event: &Event) -> (u32, u32) {
    match event {
        Event::Fork(f) => (f.child_pid, f.child_tgid),
        Event::Exec(e) => (e.pid, e.tgid),
        Event::Exit(e) => (e.pid, e.tgid),
        Event::OomKill(k) => (k.pid, k.pid),
        Event::HungTask(h) => (h.pid, h.tgid),
        Event::CgroupAttach(a) => (a.pid, a.tgid),
        Event::Unblocked(u) => (u.pid, u.tgid),
        Event::Rss(r) => (r.pid, r.tgid),
        Event::ReclaimStall(r) => (r.pid, r.tgid),
        Event::Condemned(c) => (c.forker_tgid, c.forker_tgid),
    }
}

fn subject_comm(event: &Event, ctx: &Context<'_>) -> Option<Comm> {
    match event {
        Event::Fork(f) => Some(f.child_comm),
        Event::Exec(e) => Some(e.comm),
        Event::Exit(e) => Some(e.comm),
        Event::OomKill(k) => k.comm.or(ctx.comm),
        Event::HungTask(h) => Some(h.comm),
        Event::CgroupAttach(_) => ctx.comm,
        Event::Unblocked(u) => Some(u.comm),
        Event::Rss(r) => Some(r.comm),
        Event::ReclaimStall(r) => Some(r.comm),
        Event::Condemned(_) => ctx.comm,
    }
}

pub fn human_duration(ns: u64) -> String {
    match ns {
        n if n < 1_000_000 => format!("{:.1}µs", n as f64 / 1e3),
        n if n < 1_000_000_000 => format!("{:.1}ms", n as f64 / 1e6),
        n => format!("{:.1}s", n as f64 / 1e9),
    }
}

#[cfg(test)]
mod tests;

/// Whether a record's value holds a name that is not UTF-8 (see
/// `cgroup::path_text`), at any depth.
fn holds_raw(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) => crate::host::cgroup::has_raw(s),
        serde_json::Value::Array(items) => items.iter().any(holds_raw),
        serde_json::Value::Object(map) => map.values().any(holds_raw),
        _ => false,
    }
}

/// A record's fields with each name that is not UTF-8 made lossy and its
/// exact bytes beside it as `<key>_hex` (in nested objects too), so that
/// JSON, text, hooks and metrics all see one form.
fn twin_raw(fields: &[(String, serde_json::Value)]) -> Vec<(String, serde_json::Value)> {
    fn fix(value: &mut serde_json::Value) -> Option<String> {
        match value {
            serde_json::Value::String(s) if crate::host::cgroup::has_raw(s) => {
                let hex = text::hex_of(&crate::host::cgroup::path_bytes(s));
                *s = crate::host::cgroup::lossy(s).into_owned();
                Some(hex)
            }
            serde_json::Value::Array(items) => {
                items.iter_mut().for_each(|v| {
                    fix(v);
                });
                None
            }
            serde_json::Value::Object(map) => {
                let mut twins = Vec::new();
                for (k, v) in map.iter_mut() {
                    if let Some(hex) = fix(v) {
                        twins.push((format!("{k}_hex"), hex));
                    }
                }
                for (k, hex) in twins {
                    map.insert(k, hex.into());
                }
                None
            }
            _ => None,
        }
    }
    let mut out = Vec::with_capacity(fields.len() + 1);
    let mut twins = Vec::new();
    for (k, v) in fields {
        let mut v = v.clone();
        if let Some(hex) = fix(&mut v) {
            twins.push((k.as_str(), hex));
        }
        out.push((k.clone(), v));
    }
    for (k, hex) in twins {
        out.push((format!("{k}_hex"), hex.into()));
    }
    out
}

/// Whether an event is one of the rare ones that report something done to
/// the host (an OOM kill, a hung task, a task unblocked, a condemnation by
/// the probe) rather than the stream of forks, execs, exits and samples.
/// These are never shed: an operator reads them after the fact, and a
/// storm that makes guard shed is when they matter most.
pub fn notable(event: &Event) -> bool {
    matches!(
        event,
        Event::OomKill(_) | Event::HungTask(_) | Event::Unblocked(_) | Event::Condemned(_)
    )
}
