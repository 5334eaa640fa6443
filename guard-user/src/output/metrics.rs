//! `--metrics ADDR`: Prometheus metrics over HTTP (`GET /metrics`), in the
//! OpenMetrics text format written by the `prometheus-client` crate and
//! served by `hyper`. The agent hands a [`Snapshot`] over once a second;
//! a scrape reads the last one, so it never waits on the pipeline.

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
}

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
        };
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
    pub fn update(&self, s: &Snapshot) {
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

    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
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
                    let (status, body) = if req.uri().path() == "/metrics" {
                        let text = metrics.lock().map(|m| m.encode()).unwrap_or_default();
                        (200, text)
                    } else {
                        (404, "guard serves /metrics only\n".to_owned())
                    };
                    Response::builder()
                        .status(status)
                        .header(
                            "content-type",
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )
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
        let m = Metrics::default();
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
        let text = m.encode();
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
}
