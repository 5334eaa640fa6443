//! `--metrics ADDR`: Prometheus metrics over HTTP (`GET /metrics`), written
//! by the `prometheus-client` crate and served by `hyper`, with the agent's
//! health (`GET /healthz`, `GET /readyz`) for probes. The agent hands a
//! [`Snapshot`] over once a second; a scrape reads the last one, so it
//! never waits on the pipeline.
//!
//! The format follows the scraper's `Accept` header: OpenMetrics 1.0 when
//! it asks for `application/openmetrics-text` at least as much as for
//! anything else (Prometheus does), else the classic text format 0.0.4
//! (curl, promtool, older parsers), as client_golang decides.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, atomic::AtomicU64},
};

use http_body_util::Full;
use hyper::{Request, Response, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::output::Tally;

/// What the agent knows, once a second.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// (kind, events handled so far).
    pub seen: Vec<(&'static str, u64)>,
    /// (kind, reason, events lost so far); reasons: `ring_full`,
    /// `read_failed` (kernel side), `queue_full` (agent side, kind `all`).
    pub lost: Vec<(&'static str, &'static str, u64)>,
    pub tally: Tally,
    /// (cgroup, pids.current, pids.max, seconds to it at the current slope).
    pub pids: Vec<(String, u64, Option<u64>, Option<f64>)>,
    /// (memory pool, unreclaimable bytes, limit bytes, seconds to it).
    pub memory: Vec<(String, u64, u64, Option<f64>)>,
    pub blocked_now: u64,
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
    /// Probes attached now.
    pub probes: usize,
}

/// The text format a scrape is answered in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    /// Prometheus' text format 0.0.4.
    Classic,
}

impl Format {
    /// From a request's `Accept` header: OpenMetrics when its quality is
    /// positive and at least that of `text/plain` (or of a wildcard); the
    /// classic format otherwise, and when there is no header.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let (mut open, mut classic) = (0.0_f64, 0.0_f64);
        for range in accept.unwrap_or_default().split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.strip_prefix("q="))
                .find_map(|q| q.parse::<f64>().ok())
                .unwrap_or(1.0);
            match media.as_str() {
                "application/openmetrics-text" => open = open.max(q),
                "text/plain" | "text/*" | "*/*" => classic = classic.max(q),
                _ => {}
            }
        }
        if open > 0.0 && open >= classic {
            Format::OpenMetrics
        } else {
            Format::Classic
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Classic => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// OpenMetrics text as the classic format: a counter's family is named by
/// its sample (`x_total`) in `# HELP` and `# TYPE`, there is no `# UNIT`
/// nor `# EOF`. prometheus-client writes OpenMetrics only; the rest of the
/// two formats (samples, label escaping) is the same for what guard
/// exports, so a rewrite of the metadata lines is all it takes.
fn classic(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut text = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| Some((p, line.strip_prefix(p)?)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                text.push_str(prefix);
                text.push_str(name);
                if counters.contains(name) {
                    text.push_str("_total");
                }
                text.push(' ');
                text.push_str(tail);
            }
            None => text.push_str(line),
        }
        text.push('\n');
    }
    text
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LostLabels {
    kind: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AlertLabels {
    detector: String,
    rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    detector: String,
    action: String,
    outcome: String,
}

/// A cgroup's label: its path, and when the path is not UTF-8 (lossy in
/// `cgroup`) its exact bytes in `cgroup_hex`, so that no cgroup vanishes
/// from the metrics or is confused with another.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct CgroupLabel {
    cgroup: String,
    cgroup_hex: Option<String>,
}

impl CgroupLabel {
    fn new(path: &str) -> Self {
        Self {
            cgroup: crate::host::cgroup::lossy(path).into_owned(),
            cgroup_hex: crate::host::cgroup::has_raw(path)
                .then(|| crate::output::text::hex_of(&crate::host::cgroup::path_bytes(path))),
        }
    }
}

impl prometheus_client::encoding::EncodeLabelSet for CgroupLabel {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelSetEncoder,
    ) -> Result<(), std::fmt::Error> {
        let mut labels = vec![("cgroup", self.cgroup.as_str())];
        if let Some(hex) = &self.cgroup_hex {
            labels.push(("cgroup_hex", hex));
        }
        labels.as_slice().encode(encoder)
    }
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// The registry and its metrics.
pub struct Metrics {
    registry: Registry,
    events: Family<KindLabel, Counter>,
    lost: Family<LostLabels, Counter>,
    alerts: Family<AlertLabels, Counter>,
    actions: Family<ActionLabels, Counter>,
    pids_current: Family<CgroupLabel, Gauge>,
    pids_limit: Family<CgroupLabel, Gauge>,
    pids_eta: Family<CgroupLabel, FloatGauge>,
    memory_usage: Family<CgroupLabel, Gauge>,
    memory_limit: Family<CgroupLabel, Gauge>,
    memory_eta: Family<CgroupLabel, FloatGauge>,
    blocked: Gauge,
    cpu: Counter<f64, AtomicU64>,
    rss: Gauge,
    /// When the agent last handed a snapshot over, and how many probes it
    /// had attached then: what `/healthz` and `/readyz` answer from.
    updated: Option<std::time::Instant>,
    probes: usize,
}

/// `/healthz` fails once the agent's loop has handed no snapshot over for
/// this long (it does every second, bombs included): the loop is stuck.
pub const LIVE_WITHIN: std::time::Duration = std::time::Duration::from_secs(15);
/// `/readyz` needs a snapshot this recent, with probes attached.
pub const READY_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Brings a counter fed from a running total up to it.
fn advance(counter: &Counter, total: u64) {
    counter.inc_by(total.saturating_sub(counter.get()));
}

fn as_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("guard");
        let m = Metrics {
            events: Family::default(),
            lost: Family::default(),
            alerts: Family::default(),
            actions: Family::default(),
            pids_current: Family::default(),
            pids_limit: Family::default(),
            pids_eta: Family::default(),
            memory_usage: Family::default(),
            memory_limit: Family::default(),
            memory_eta: Family::default(),
            blocked: Gauge::default(),
            cpu: Counter::default(),
            rss: Gauge::default(),
            registry: Registry::default(),
            updated: None,
            probes: 0,
        };
        let build: Family<BuildLabels, Gauge> = Family::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").into(),
            })
            .set(1);
        registry.register(
            "build_info",
            "guard's version (the value is always 1)",
            build,
        );
        registry.register("events", "Kernel events handled, by kind", m.events.clone());
        registry.register(
            "events_lost",
            "Events lost, by kind and reason (ring_full, read_failed in the kernel; queue_full in the agent)",
            m.lost.clone(),
        );
        registry.register(
            "alerts",
            "Alerts raised, by detector and rule",
            m.alerts.clone(),
        );
        registry.register(
            "actions",
            "Actions taken, by detector, action and outcome",
            m.actions.clone(),
        );
        registry.register(
            "pids_current",
            "pids.current of each watched cgroup",
            m.pids_current.clone(),
        );
        registry.register(
            "pids_limit",
            "pids.max of each watched cgroup that has one",
            m.pids_limit.clone(),
        );
        registry.register(
            "pids_limit_eta_seconds",
            "Seconds until pids.max at the current growth, for cgroups growing toward it",
            m.pids_eta.clone(),
        );
        registry.register(
            "memory_usage_bytes",
            "Unreclaimable memory (anon + shmem) of each memory pool (the host: MemTotal - MemAvailable)",
            m.memory_usage.clone(),
        );
        registry.register(
            "memory_limit_bytes",
            "Memory limit of each pool",
            m.memory_limit.clone(),
        );
        registry.register(
            "memory_limit_eta_seconds",
            "Seconds until the pool's limit at its current growth, for pools growing toward it",
            m.memory_eta.clone(),
        );
        registry.register(
            "blocked_tasks",
            "Tasks reported blocked now",
            m.blocked.clone(),
        );
        registry.register("agent_cpu_seconds", "guard's own CPU time", m.cpu.clone());
        registry.register(
            "agent_rss_bytes",
            "guard's own resident memory",
            m.rss.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// With the counters of `countable` (see `Settings::countable`) at 0.
    pub fn new(countable: &[crate::output::record::Counted]) -> Self {
        use crate::output::record::Counted;
        let m = Self::default();
        for &counted in countable {
            match counted {
                Counted::Alert(detector, rule) => {
                    drop(m.alerts.get_or_create(&AlertLabels {
                        detector: detector.name().into(),
                        rule: rule.name().into(),
                    }));
                }
                Counted::Action(detector, action, outcome) => {
                    drop(m.actions.get_or_create(&ActionLabels {
                        detector: detector.name().into(),
                        action: action.name().into(),
                        outcome: outcome.name().into(),
                    }));
                }
            }
        }
        m
    }

    pub fn update(&mut self, s: &Snapshot) {
        self.updated = Some(std::time::Instant::now());
        self.probes = s.probes;
        for &(kind, n) in &s.seen {
            advance(
                &self.events.get_or_create(&KindLabel { kind: kind.into() }),
                n,
            );
        }
        for &(kind, reason, n) in &s.lost {
            let labels = LostLabels {
                kind: kind.into(),
                reason: reason.into(),
            };
            advance(&self.lost.get_or_create(&labels), n);
        }
        for ((detector, rule), &n) in &s.tally.alerts {
            let labels = AlertLabels {
                detector: detector.name().into(),
                rule: rule.name().into(),
            };
            advance(&self.alerts.get_or_create(&labels), n);
        }
        for ((detector, action, outcome), &n) in &s.tally.actions {
            let labels = ActionLabels {
                detector: detector.name().into(),
                action: action.name().into(),
                outcome: outcome.name().into(),
            };
            advance(&self.actions.get_or_create(&labels), n);
        }
        // Cgroups come and go: the gauges show the ones read now.
        for family in [
            &self.pids_current,
            &self.pids_limit,
            &self.memory_usage,
            &self.memory_limit,
        ] {
            family.clear();
        }
        self.pids_eta.clear();
        self.memory_eta.clear();
        for (cgroup, current, limit, eta) in &s.pids {
            let label = CgroupLabel::new(cgroup);
            self.pids_current
                .get_or_create(&label)
                .set(as_i64(*current));
            if let Some(limit) = limit {
                self.pids_limit.get_or_create(&label).set(as_i64(*limit));
            }
            if let Some(eta) = eta {
                self.pids_eta.get_or_create(&label).set(*eta);
            }
        }
        for (pool, usage, limit, eta) in &s.memory {
            let label = CgroupLabel::new(pool);
            self.memory_usage.get_or_create(&label).set(as_i64(*usage));
            self.memory_limit.get_or_create(&label).set(as_i64(*limit));
            if let Some(eta) = eta {
                self.memory_eta.get_or_create(&label).set(*eta);
            }
        }
        self.blocked.set(as_i64(s.blocked_now));
        let cpu = s.cpu_seconds - self.cpu.get();
        if cpu > 0.0 {
            self.cpu.inc_by(cpu);
        }
        self.rss.set(as_i64(s.rss_bytes));
    }

    pub fn encode(&self, format: Format) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        match format {
            Format::OpenMetrics => text,
            Format::Classic => classic(&text),
        }
    }

    /// `/healthz`: the agent's loop is alive (it handed a snapshot over
    /// within [`LIVE_WITHIN`]); `/readyz`: and its probes are attached and
    /// the snapshot is within [`READY_WITHIN`]. Before the first snapshot
    /// (a second after start) it is live but not ready.
    pub fn health(&self, path: &str) -> (u16, String) {
        let age = self.updated.map(|t| t.elapsed());
        let (ok, why) = match (path, age) {
            ("/healthz", None) => (true, "starting".to_owned()),
            ("/healthz", Some(age)) if age <= LIVE_WITHIN => (true, "ok".to_owned()),
            ("/healthz", Some(age)) => (false, format!("no snapshot for {} s", age.as_secs())),
            (_, None) => (false, "starting".to_owned()),
            (_, Some(_)) if self.probes == 0 => (false, "no probe attached".to_owned()),
            (_, Some(age)) if age <= READY_WITHIN => {
                (true, format!("ok: {} probes attached", self.probes))
            }
            (_, Some(age)) => (false, format!("no snapshot for {} s", age.as_secs())),
        };
        (if ok { 200 } else { 503 }, format!("{why}\n"))
    }
}

/// Connections served at once; more wait in the kernel's accept queue,
/// holding none of guard's descriptors. Scrapers make one at a time.
pub const MAX_CONNECTIONS: usize = 16;
/// Longest a client may take to send its request headers.
pub const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Longest one connection may live, whatever it does (a slow reader, a
/// request at a byte a second, a keep-alive left idle).
pub const CONNECTION_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);
/// How often a port that could not be bound is tried again.
pub const BIND_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves `GET /metrics` on `addr` from a task of its own, bounded: at
/// most [`MAX_CONNECTIONS`] at once, each for at most [`CONNECTION_LIMIT`]
/// and its headers within [`HEADER_TIMEOUT`]. Enforcement never depends on
/// it. Returns the address bound now (the port chosen when `addr`'s is 0),
/// or `None` when it cannot be bound yet: it is said, and tried again every
/// [`BIND_RETRY`] (a port squatted at start must not keep guard from
/// running, nor from serving later).
pub async fn serve(addr: SocketAddr, metrics: Arc<Mutex<Metrics>>) -> Option<SocketAddr> {
    let (listener, bound) = match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => {
            let bound = listener.local_addr().ok();
            (Some(listener), bound)
        }
        Err(err) => {
            tracing::warn!(
                "--metrics {addr}: cannot listen there ({err}); guard runs on and tries again \
                 every {} s",
                BIND_RETRY.as_secs()
            );
            (None, None)
        }
    };
    tokio::spawn(async move {
        let listener = match listener {
            Some(l) => l,
            None => loop {
                tokio::time::sleep(BIND_RETRY).await;
                if let Ok(l) = tokio::net::TcpListener::bind(addr).await {
                    tracing::info!("--metrics {addr}: listening now");
                    break l;
                }
            },
        };
        accept_loop(listener, metrics).await;
    });
    bound
}

async fn accept_loop(listener: tokio::net::TcpListener, metrics: Arc<Mutex<Metrics>>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        // A slot first: past the cap, clients wait in the kernel's queue.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Out of descriptors, say: not a busy loop meanwhile.
                tracing::debug!("metrics: accept: {err}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                async move {
                    let format = Format::negotiate(
                        req.headers()
                            .get(hyper::header::ACCEPT)
                            .and_then(|v| v.to_str().ok()),
                    );
                    let (status, content_type, body) = match req.uri().path() {
                        "/metrics" => {
                            let text = metrics.lock().map(|m| m.encode(format)).unwrap_or_default();
                            (200, format.content_type(), text)
                        }
                        path @ ("/healthz" | "/readyz") => {
                            let (status, text) = metrics
                                .lock()
                                .map(|m| m.health(path))
                                .unwrap_or((500, "poisoned\n".to_owned()));
                            (status, "text/plain; charset=utf-8", text)
                        }
                        _ => (
                            404,
                            "text/plain; charset=utf-8",
                            "guard serves /metrics, /healthz and /readyz\n".to_owned(),
                        ),
                    };
                    Response::builder()
                        .status(status)
                        .header("content-type", content_type)
                        .body(Full::new(Bytes::from(body)))
                }
            });
            let connection = http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(16 << 10)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_LIMIT, connection).await {
                Ok(Err(err)) => tracing::debug!("metrics connection: {err}"),
                Err(_) => tracing::debug!("metrics connection closed after {CONNECTION_LIMIT:?}"),
                Ok(Ok(())) => {}
            }
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        detect::switches::Detector,
        output::record::{ActionResult, Rule},
        respond::policy::ActionKind,
    };

    #[test]
    fn a_snapshot_becomes_conventional_metrics() {
        let mut m = Metrics::default();
        let mut s = Snapshot {
            seen: vec![("fork", 10), ("exit", 9)],
            lost: vec![("fork", "ring_full", 2), ("all", "queue_full", 0)],
            pids: vec![("/sys/fs/cgroup/ci".into(), 40, Some(100), Some(12.5))],
            memory: vec![("host".into(), 1 << 30, 4 << 30, None)],
            blocked_now: 3,
            cpu_seconds: 1.5,
            rss_bytes: 24 << 20,
            ..Snapshot::default()
        };
        s.tally.alerts.insert((Detector::Fork, Rule::Explosion), 1);
        s.tally.actions.insert(
            (Detector::Fork, ActionKind::Kill, ActionResult::Contained),
            1,
        );
        m.update(&s);
        // Totals that grow: counters follow; a cgroup that went: gone.
        s.seen = vec![("fork", 15)];
        s.pids.clear();
        m.update(&s);
        let text = m.encode(Format::OpenMetrics);
        for line in [
            "guard_events_total{kind=\"fork\"} 15",
            "guard_events_total{kind=\"exit\"} 9",
            "guard_events_lost_total{kind=\"fork\",reason=\"ring_full\"} 2",
            "guard_alerts_total{detector=\"fork\",rule=\"explosion\"} 1",
            "guard_actions_total{detector=\"fork\",action=\"kill\",outcome=\"contained\"} 1",
            "guard_memory_usage_bytes{cgroup=\"host\"} 1073741824",
            "guard_blocked_tasks 3",
            "guard_agent_cpu_seconds_total 1.5",
            "guard_agent_rss_bytes 25165824",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
        assert!(!text.contains("guard_pids_current{"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn the_scraper_chooses_the_format() {
        use Format::*;
        for (accept, format) in [
            (None, Classic),
            (Some("*/*"), Classic),
            (Some("text/plain;version=0.0.4"), Classic),
            // Prometheus 2.x and 3.x.
            (
                Some(
                    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                     version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
                ),
                OpenMetrics,
            ),
            (
                Some("application/openmetrics-text;version=1.0.0;q=0.5,text/plain;q=0.4"),
                OpenMetrics,
            ),
            (
                Some("text/plain;q=0.9, application/openmetrics-text;q=0.5"),
                Classic,
            ),
            (Some("application/openmetrics-text;q=0"), Classic),
            (Some("Application/OpenMetrics-Text"), OpenMetrics),
        ] {
            assert_eq!(Format::negotiate(accept), format, "{accept:?}");
        }
    }

    #[test]
    fn the_classic_format_names_counters_by_their_samples() {
        let mut m = Metrics::new(&[
            crate::output::record::Counted::Alert(Detector::Leak, Rule::Leak),
            crate::output::record::Counted::Action(
                Detector::Fork,
                ActionKind::Kill,
                ActionResult::NotContained,
            ),
        ]);
        m.update(&Snapshot {
            seen: vec![("fork", 3)],
            probes: 4,
            ..Snapshot::default()
        });
        let text = m.encode(Format::Classic);
        for line in [
            "# HELP guard_events_total Kernel events handled, by kind.",
            "# TYPE guard_events_total counter",
            "guard_events_total{kind=\"fork\"} 3",
            "# TYPE guard_build_info gauge",
            "guard_build_info{version=\"0.1.0\"} 1",
            // Primed: there before anything happened.
            "guard_alerts_total{detector=\"leak\",rule=\"leak\"} 0",
            "guard_actions_total{detector=\"fork\",action=\"kill\",outcome=\"not_contained\"} 0",
            "# TYPE guard_agent_rss_bytes gauge",
            "# TYPE guard_agent_cpu_seconds_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
        assert!(!text.contains("# TYPE guard_events counter"), "{text}");
        assert_eq!(m.health("/healthz").0, 200);
        assert_eq!(m.health("/readyz").0, 200);
    }

    #[test]
    fn health_needs_a_recent_snapshot_and_probes() {
        let mut m = Metrics::default();
        assert_eq!(m.health("/healthz").0, 200, "live while starting");
        assert_eq!(m.health("/readyz").0, 503, "not ready before a snapshot");
        m.update(&Snapshot::default());
        let (status, why) = m.health("/readyz");
        assert_eq!((status, why.as_str()), (503, "no probe attached\n"));
        m.probes = 3;
        assert_eq!(m.health("/readyz").0, 200);
        m.updated = std::time::Instant::now().checked_sub(READY_WITHIN * 2);
        assert_eq!(m.health("/readyz").0, 503);
        assert_eq!(m.health("/healthz").0, 200);
        m.updated = std::time::Instant::now().checked_sub(LIVE_WITHIN * 2);
        assert_eq!(m.health("/healthz").0, 503);
    }
}
