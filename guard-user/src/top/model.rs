//! What `guard top` shows, kept from the stream's lines: the last
//! snapshot, a few minutes of each cgroup's tasks and each pool's memory
//! (for the sparklines), the last alerts and actions. Pure: lines in, rows
//! out; the terminal is `top::run`'s.

use std::collections::{HashMap, VecDeque};

use serde_json::Value;

use crate::output::record::{PidsState, PoolState, Snapshot};

/// Readings kept per cgroup and pool: one a second, five minutes.
pub const SPARK_POINTS: usize = 300;
/// Alerts, actions and endings kept.
pub const EVENTS_KEPT: usize = 100;

/// How the cgroup rows are ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sort {
    /// Soonest to its limit first (then fastest growing).
    Eta,
    /// Fastest growing first.
    Growth,
    /// Most tasks first.
    Tasks,
}

impl Sort {
    pub fn next(self) -> Sort {
        match self {
            Sort::Eta => Sort::Growth,
            Sort::Growth => Sort::Tasks,
            Sort::Tasks => Sort::Eta,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Sort::Eta => "time to limit",
            Sort::Growth => "growth",
            Sort::Tasks => "tasks",
        }
    }
}

/// One cgroup row: the snapshot's, and its readings since top connected.
#[derive(Clone, Debug, PartialEq)]
pub struct CgroupRow {
    pub state: PidsState,
    pub spark: Vec<u64>,
}

/// One memory pool row, alike.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolRow {
    pub state: PoolState,
    pub spark: Vec<u64>,
}

/// A line of the alert and action list.
#[derive(Clone, Debug, PartialEq)]
pub struct Told {
    pub time: String,
    pub text: String,
    pub critical: bool,
}

#[derive(Default)]
pub struct Model {
    pub host: String,
    pub snapshot: Option<Snapshot>,
    tasks: HashMap<String, VecDeque<u64>>,
    memory: HashMap<String, VecDeque<u64>>,
    pub told: VecDeque<Told>,
    /// Lines read, and lines that were not JSON.
    pub lines: u64,
    pub bad_lines: u64,
}

fn push(series: &mut HashMap<String, VecDeque<u64>>, key: &str, value: u64) {
    let s = series.entry(key.to_owned()).or_default();
    if s.len() >= SPARK_POINTS {
        s.pop_front();
    }
    s.push_back(value);
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn u64_of(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(Value::as_u64)
}

impl Model {
    /// Takes one NDJSON line of the stream.
    pub fn line(&mut self, line: &str) {
        self.lines += 1;
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            self.bad_lines += 1;
            return;
        };
        if let Some(host) = v.get("host").and_then(Value::as_str) {
            host.clone_into(&mut self.host);
        }
        match str_of(&v, "kind") {
            "snapshot" => {
                let Ok(snapshot) = serde_json::from_value::<Snapshot>(v) else {
                    self.bad_lines += 1;
                    return;
                };
                for p in &snapshot.pids {
                    push(&mut self.tasks, &p.cgroup, p.tasks);
                }
                for p in &snapshot.memory {
                    push(&mut self.memory, &p.pool, p.bytes);
                }
                self.snapshot = Some(snapshot);
            }
            "alert" | "action" | "resolved" | "refusal" | "lost" => self.tell(&v),
            _ => {}
        }
    }

    fn tell(&mut self, v: &Value) {
        let kind = str_of(v, "kind");
        let time = str_of(v, "time").get(11..19).unwrap_or("").to_owned();
        let offender = v
            .get("offender")
            .filter(|o| o.is_object())
            .map(|o| format!(" {} {}", u64_of(o, "pid").unwrap_or(0), str_of(o, "comm")))
            .unwrap_or_default();
        let text = match kind {
            "alert" => format!(
                "alert  {} {}{} in {}",
                str_of(v, "detector"),
                str_of(v, "rule"),
                offender,
                short_cgroup(str_of(v, "cgroup"))
            ),
            "action" => {
                let o = v.get("outcome");
                let result = match o.and_then(|o| o.get("contained")).and_then(Value::as_bool) {
                    Some(true) => "contained",
                    Some(false)
                        if o.and_then(|o| o.get("refusing")).and_then(Value::as_bool)
                            == Some(true) =>
                    {
                        "refusing"
                    }
                    Some(false) => "NOT contained",
                    None => "",
                };
                format!(
                    "action {} {} signalled {}{} {}",
                    str_of(v, "detector"),
                    str_of(v, "action"),
                    o.and_then(|o| u64_of(o, "signalled")).unwrap_or(0),
                    offender,
                    result
                )
            }
            "resolved" => format!(
                "ended  {} {} ({})",
                str_of(v, "detector"),
                str_of(v, "incident"),
                str_of(v, "ended")
            ),
            "refusal" => format!("refusal {} {}", str_of(v, "incident"), str_of(v, "state")),
            _ => format!(
                "lost events (queue {})",
                u64_of(v, "queue_full").unwrap_or(0)
            ),
        };
        if self.told.len() >= EVENTS_KEPT {
            self.told.pop_front();
        }
        self.told.push_back(Told {
            time,
            text,
            critical: str_of(v, "severity") == "critical" || kind == "action",
        });
    }

    /// The cgroup rows, filtered (a substring of the cgroup or offender)
    /// and sorted.
    pub fn cgroups(&self, sort: Sort, filter: &str) -> Vec<CgroupRow> {
        let mut rows: Vec<CgroupRow> = self
            .snapshot
            .iter()
            .flat_map(|s| &s.pids)
            .filter(|p| {
                filter.is_empty()
                    || p.cgroup.contains(filter)
                    || p.offender.as_ref().is_some_and(|o| o.comm.contains(filter))
            })
            .map(|p| CgroupRow {
                spark: spark(&self.tasks, &p.cgroup),
                state: p.clone(),
            })
            .collect();
        let eta = |r: &CgroupRow| r.state.eta_secs.unwrap_or(f64::INFINITY);
        match sort {
            Sort::Eta => rows.sort_by(|a, b| {
                eta(a)
                    .total_cmp(&eta(b))
                    .then(b.state.per_sec.total_cmp(&a.state.per_sec))
            }),
            Sort::Growth => rows.sort_by(|a, b| b.state.per_sec.total_cmp(&a.state.per_sec)),
            Sort::Tasks => rows.sort_by_key(|r| std::cmp::Reverse(r.state.tasks)),
        }
        rows
    }

    /// The memory pool rows, filtered and soonest to the limit first (the
    /// agent's order).
    pub fn pools(&self, filter: &str) -> Vec<PoolRow> {
        self.snapshot
            .iter()
            .flat_map(|s| &s.memory)
            .filter(|p| filter.is_empty() || p.pool.contains(filter))
            .map(|p| PoolRow {
                spark: spark(&self.memory, &p.pool),
                state: p.clone(),
            })
            .collect()
    }
}

fn spark(series: &HashMap<String, VecDeque<u64>>, key: &str) -> Vec<u64> {
    series
        .get(key)
        .map(|s| s.iter().copied().collect())
        .unwrap_or_default()
}

/// A cgroup path without the mount's common prefix.
pub fn short_cgroup(path: &str) -> &str {
    path.strip_prefix("/sys/fs/cgroup").unwrap_or(path)
}

/// The last `width` points as block characters, scaled to their range.
pub fn sparkline(points: &[u64], width: usize) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let tail = &points[points.len().saturating_sub(width)..];
    let (lo, hi) = (
        tail.iter().copied().min().unwrap_or(0),
        tail.iter().copied().max().unwrap_or(0),
    );
    tail.iter()
        .map(|&p| {
            if hi == lo {
                BARS[0]
            } else {
                BARS[((p - lo) * 7 / (hi - lo)) as usize]
            }
        })
        .collect()
}

/// Seconds as `12s`, `4m05s`, `2h10m`; `-` for none.
pub fn eta_text(secs: Option<f64>) -> String {
    match secs {
        None => "-".to_owned(),
        Some(s) if s < 60.0 => format!("{s:.0}s"),
        Some(s) if s < 3600.0 => format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64),
        Some(s) if s < 360_000.0 => format!(
            "{}h{:02}m",
            (s / 3600.0) as u64,
            ((s % 3600.0) / 60.0) as u64
        ),
        Some(_) => ">99h".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(rows: &[(&str, u64, f64, Option<f64>)]) -> String {
        let pids: Vec<Value> = rows
            .iter()
            .map(|(cg, tasks, per_sec, eta)| {
                serde_json::json!({"cgroup": cg, "tasks": tasks, "limit": 1000, "per_sec": per_sec,
                    "eta_secs": eta, "offender": {"pid": 7, "comm": "runner", "exe": null, "subtree_size": 3}})
            })
            .collect();
        serde_json::json!({"kind": "snapshot", "host": "h", "pids": pids, "memory": [], "blocked": [],
            "agent": {"events_per_sec": 0.0, "lost": 0, "cpu_percent": 0.0, "rss_bytes": 0, "probes": 0,
                "incidents_open": 0, "clients": 1}})
            .to_string()
    }

    #[test]
    fn rows_sort_by_time_to_limit_then_growth_and_filter() {
        let mut m = Model::default();
        m.line(&snapshot(&[
            ("/a", 10, 0.0, None),
            ("/b", 500, 30.0, Some(16.0)),
            ("/c", 900, 5.0, Some(20.0)),
        ]));
        let order =
            |rows: Vec<CgroupRow>| rows.into_iter().map(|r| r.state.cgroup).collect::<Vec<_>>();
        assert_eq!(order(m.cgroups(Sort::Eta, "")), ["/b", "/c", "/a"]);
        assert_eq!(order(m.cgroups(Sort::Growth, "")), ["/b", "/c", "/a"]);
        assert_eq!(order(m.cgroups(Sort::Tasks, "")), ["/c", "/b", "/a"]);
        assert_eq!(order(m.cgroups(Sort::Eta, "/c")), ["/c"]);
        assert_eq!(order(m.cgroups(Sort::Eta, "runner")).len(), 3);
        assert_eq!(m.host, "h");
    }

    #[test]
    fn each_snapshot_adds_a_point_and_history_is_bounded() {
        let mut m = Model::default();
        for i in 0..(SPARK_POINTS as u64 + 5) {
            m.line(&snapshot(&[("/a", i, 1.0, None)]));
        }
        let rows = m.cgroups(Sort::Eta, "");
        assert_eq!(rows[0].spark.len(), SPARK_POINTS);
        assert_eq!(rows[0].spark.last(), Some(&(SPARK_POINTS as u64 + 4)));
        m.line("not json");
        assert_eq!(m.bad_lines, 1);
    }

    #[test]
    fn alerts_and_actions_are_told_in_one_line_each() {
        let mut m = Model::default();
        m.line(r#"{"kind":"alert","time":"2026-12-04T15:00:01.5Z","detector":"fork","rule":"explosion","severity":"critical","cgroup":"/sys/fs/cgroup/pids/t","offender":{"pid":42,"comm":"bash"}}"#);
        m.line(r#"{"kind":"action","time":"2026-12-04T15:00:01.6Z","detector":"fork","action":"kill","offender":{"pid":42,"comm":"bash"},"outcome":{"signalled":12,"contained":true}}"#);
        let lines: Vec<&str> = m.told.iter().map(|t| t.text.as_str()).collect();
        assert_eq!(
            lines,
            [
                "alert  fork explosion 42 bash in /pids/t",
                "action fork kill signalled 12 42 bash contained"
            ]
        );
        assert_eq!(m.told[0].time, "15:00:01");
    }

    #[test]
    fn sparklines_and_times_read_at_a_glance() {
        assert_eq!(sparkline(&[0, 7, 14], 10), "▁▄█");
        assert_eq!(sparkline(&[5, 5], 10), "▁▁");
        assert_eq!(sparkline(&[1, 2, 3, 4], 2), "▁█");
        assert_eq!(eta_text(Some(12.4)), "12s");
        assert_eq!(eta_text(Some(245.0)), "4m05s");
        assert_eq!(eta_text(Some(7800.0)), "2h10m");
        assert_eq!(eta_text(None), "-");
    }
}
