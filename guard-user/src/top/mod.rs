//! `guard top`: a live view of what the agent sees, drawn from its
//! `--socket` stream (ratatui on crossterm). When no agent listens there,
//! it starts one of its own, log only (`--dry-run`), for as long as it
//! runs.
//!
//! - `model`: the stream's lines in, rows out (pure, tested).
//! - this file: the connection, the terminal, the keys, the drawing.

pub mod model;

use std::{
    ffi::OsString,
    io::{BufRead as _, BufReader},
    os::unix::{net::UnixStream, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use ratatui::{
    Frame,
    crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
    layout::{Constraint, Layout},
    style::{Modifier, Style},
    text::Line,
    widgets::{Block, Borders, Paragraph, Row, Table},
};

use self::model::{Model, Sort, eta_text, sparkline};

/// How long an agent of top's own may take to start listening.
const OWN_AGENT_START: Duration = Duration::from_secs(30);

/// An agent top started itself: stopped (and its directory removed) when
/// top ends.
struct OwnAgent {
    child: Child,
    dir: PathBuf,
}

impl Drop for OwnAgent {
    fn drop(&mut self) {
        // SAFETY: kill takes a pid and a signal; the child is ours.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Connects to `socket`, or (when nothing listens and `own` allows)
/// starts an agent of top's own with `agent_args` and connects to it.
fn connect(
    socket: &Path,
    own: bool,
    agent_args: &[OsString],
) -> Result<(UnixStream, Option<OwnAgent>)> {
    match UnixStream::connect(socket) {
        Ok(conn) => return Ok((conn, None)),
        Err(err) if !own => {
            bail!(
                "no agent answers at {} ({err}); start one (`guard`, or the guard service), or \
                 leave out --no-agent so that top starts its own",
                socket.display()
            )
        }
        Err(_) => {}
    }
    let dir = std::env::temp_dir().join(format!("guard-top-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let own_socket = dir.join("guard.sock");
    let log = std::fs::File::create(dir.join("agent.log"))?;
    let exe = std::env::current_exe().context("finding guard's own binary")?;
    let mut cmd = Command::new(exe);
    cmd.arg("--socket")
        .arg(&own_socket)
        .args([
            "--incident-dir",
            "",
            "--dry-run",
            "--json",
            "--events",
            "none",
        ])
        .args(agent_args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe; it makes the
    // agent stop if top dies without stopping it.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let child = cmd.spawn().context("starting an agent for guard top")?;
    let mut agent = OwnAgent { child, dir };
    let until = Instant::now() + OWN_AGENT_START;
    eprintln!(
        "guard top: no agent at {}; starting one (log only) ...",
        socket.display()
    );
    loop {
        if let Ok(conn) = UnixStream::connect(&own_socket) {
            return Ok((conn, Some(agent)));
        }
        if let Ok(Some(status)) = agent.child.try_wait() {
            let log = std::fs::read_to_string(agent.dir.join("agent.log")).unwrap_or_default();
            bail!("the agent guard top started ended ({status}):\n{log}");
        }
        if Instant::now() >= until {
            bail!("the agent guard top started did not listen within {OWN_AGENT_START:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What the keys change.
struct Ui {
    sort: Sort,
    filter: String,
    editing: bool,
    paused: bool,
    selected: usize,
    expanded: bool,
    color: bool,
    /// The reader ended: the agent stopped.
    gone: bool,
    own: bool,
}

/// Runs `guard top` until `q`.
pub fn run(socket: &Path, own: bool, agent_args: &[OsString], color: bool) -> Result<()> {
    let (conn, agent) = connect(socket, own, agent_args)?;
    let (tx, rx) = mpsc::channel::<Option<String>>();
    std::thread::Builder::new()
        .name("guard-top-read".into())
        .spawn(move || {
            for line in BufReader::new(conn).lines() {
                let Ok(line) = line else { break };
                if tx.send(Some(line)).is_err() {
                    return;
                }
            }
            let _ = tx.send(None);
        })
        .context("starting the stream reader")?;
    let mut ui = Ui {
        sort: Sort::Eta,
        filter: String::new(),
        editing: false,
        paused: false,
        selected: 0,
        expanded: false,
        color,
        gone: false,
        own: agent.is_some(),
    };
    // Raw mode and the alternate screen, restored on return and on panic.
    let mut terminal = ratatui::try_init().context("setting up the terminal")?;
    let result = main_loop(&mut terminal, &rx, &mut ui);
    ratatui::restore();
    drop(agent);
    result
}

fn main_loop(
    terminal: &mut ratatui::DefaultTerminal,
    rx: &mpsc::Receiver<Option<String>>,
    ui: &mut Ui,
) -> Result<()> {
    let mut model = Model::default();
    let mut held: Vec<String> = Vec::new();
    loop {
        while let Ok(line) = rx.try_recv() {
            match line {
                Some(line) if ui.paused => held.push(line),
                Some(line) => model.line(&line),
                None => ui.gone = true,
            }
        }
        if !ui.paused {
            for line in held.drain(..) {
                model.line(&line);
            }
        }
        terminal.draw(|f| draw(f, &model, ui))?;
        if !event::poll(Duration::from_millis(250))? {
            continue;
        }
        let Event::Key(key) = event::read()? else {
            continue;
        };
        if key.kind != KeyEventKind::Press {
            continue;
        }
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return Ok(());
        }
        if ui.editing {
            match key.code {
                KeyCode::Enter | KeyCode::Esc => ui.editing = false,
                KeyCode::Backspace => {
                    ui.filter.pop();
                }
                KeyCode::Char(c) => ui.filter.push(c),
                _ => {}
            }
            ui.selected = 0;
            continue;
        }
        match key.code {
            KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
            KeyCode::Char('s') => ui.sort = ui.sort.next(),
            KeyCode::Char('/') => {
                ui.editing = true;
                ui.filter.clear();
            }
            KeyCode::Char('p') | KeyCode::Char(' ') => ui.paused = !ui.paused,
            KeyCode::Down | KeyCode::Char('j') => ui.selected = ui.selected.saturating_add(1),
            KeyCode::Up | KeyCode::Char('k') => ui.selected = ui.selected.saturating_sub(1),
            KeyCode::Enter | KeyCode::Char('e') => ui.expanded = !ui.expanded,
            _ => {}
        }
    }
}

/// The tail of a long cgroup path, so that its own name shows.
fn short(path: &str, width: usize) -> String {
    let path = model::short_cgroup(path);
    let chars: Vec<char> = path.chars().collect();
    if chars.len() <= width {
        return path.to_owned();
    }
    let tail: String = chars[chars.len() - (width - 1)..].iter().collect();
    format!("…{tail}")
}

fn mib(bytes: u64) -> String {
    if bytes >= 10 << 30 {
        format!("{:.0}G", bytes as f64 / f64::from(1u32 << 30))
    } else if bytes >= 1 << 30 {
        format!("{:.1}G", bytes as f64 / f64::from(1u32 << 30))
    } else {
        format!("{}M", bytes >> 20)
    }
}

/// A subtree from /proc, for the selected row's offender: (depth, pid,
/// state, comm), parents first, at most `max` lines.
fn process_tree(root: u32, max: usize) -> Vec<(usize, u32, char, String)> {
    let mut children: std::collections::BTreeMap<u32, Vec<u32>> = Default::default();
    let mut info: std::collections::HashMap<u32, (char, String)> = Default::default();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(stat) = crate::host::procfs::stat(pid) {
            children.entry(stat.ppid).or_default().push(pid);
            info.insert(pid, (stat.state, stat.comm));
        }
    }
    let mut out = Vec::new();
    let mut stack = vec![(0usize, root)];
    while let Some((depth, pid)) = stack.pop() {
        if out.len() >= max {
            break;
        }
        let Some((state, comm)) = info.get(&pid) else {
            continue;
        };
        out.push((depth, pid, *state, comm.clone()));
        for &kid in children.get(&pid).into_iter().flatten().rev() {
            stack.push((depth + 1, kid));
        }
    }
    out
}

fn draw(f: &mut Frame, model: &Model, ui: &Ui) {
    let style = |s: Style| if ui.color { s } else { Style::default() };
    let snap = model.snapshot.as_ref();
    let agent = snap.map(|s| &s.agent);
    let header = format!(
        " guard top · {}{} · {:.0} ev/s · cpu {:.1}% · rss {} · lost {} · incidents {}{}{}",
        if model.host.is_empty() {
            "-"
        } else {
            &model.host
        },
        if ui.own { " (own agent, log only)" } else { "" },
        agent.map_or(0.0, |a| a.events_per_sec),
        agent.map_or(0.0, |a| a.cpu_percent),
        mib(agent.map_or(0, |a| a.rss_bytes)),
        agent.map_or(0, |a| a.lost),
        agent.map_or(0, |a| a.incidents_open),
        if ui.paused { " · PAUSED" } else { "" },
        if ui.gone { " · AGENT GONE" } else { "" },
    );
    let rows = model.cgroups(ui.sort, &ui.filter);
    let pools = model.pools(&ui.filter);
    let blocked = snap.map_or(&[][..], |s| &s.blocked[..]);
    let [top, cg_area, mem_area, bottom, keys] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(5),
        Constraint::Length((pools.len().clamp(1, 4) + 2) as u16),
        Constraint::Length(8),
        Constraint::Length(1),
    ])
    .areas(f.area());
    f.render_widget(
        Paragraph::new(header).style(style(Style::default().add_modifier(Modifier::REVERSED))),
        top,
    );
    let selected = ui.selected.min(rows.len().saturating_sub(1));
    let width = cg_area.width as usize;
    let spark_w = if width >= 110 { 24 } else { 10 };
    // Births a second, where there is room: a churning cgroup has many
    // and gains no tasks.
    let births_w = if width >= 100 { 9 } else { 0 };
    let cg_w = width
        .saturating_sub(6 + 6 + 7 + births_w + 7 + spark_w + 22 + 8)
        .max(12);
    let table_rows: Vec<Row> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let near = r.state.eta_secs.is_some_and(|e| e < 60.0);
            let mut cells = vec![
                short(&r.state.cgroup, cg_w),
                r.state.tasks.to_string(),
                r.state.limit.map_or("max".to_owned(), |l| l.to_string()),
                format!("{:+.1}", r.state.per_sec),
            ];
            if births_w > 0 {
                cells.push(
                    r.state
                        .births_per_sec
                        .map_or("-".to_owned(), |b| format!("{b:.0}")),
                );
            }
            cells.extend([
                eta_text(r.state.eta_secs),
                sparkline(&r.spark, spark_w),
                r.state.offender.as_ref().map_or("-".to_owned(), |o| {
                    format!("{} {} ({})", o.pid, o.comm, o.subtree_size)
                }),
            ]);
            let mut row = Row::new(cells);
            if near {
                row = row.style(style(Style::default().red()));
            }
            if i == selected {
                row = row.style(style(Style::default().add_modifier(Modifier::REVERSED)));
            }
            row
        })
        .collect();
    let mut widths = vec![
        Constraint::Length(cg_w as u16),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(7),
    ];
    let mut header = vec!["CGROUP", "TASKS", "LIMIT", "+/s"];
    if births_w > 0 {
        widths.push(Constraint::Length(births_w as u16));
        header.push("BIRTHS/s");
    }
    widths.extend([
        Constraint::Length(7),
        Constraint::Length(spark_w as u16),
        Constraint::Min(10),
    ]);
    header.extend(["ETA", "TREND", "WOULD ACT ON"]);
    let cg_table = Table::new(table_rows, widths)
        .header(Row::new(header).style(style(Style::default().bold())))
        .block(Block::default().borders(Borders::TOP).title(format!(
            " cgroups by {}{} ",
            ui.sort.name(),
            if ui.filter.is_empty() {
                String::new()
            } else {
                format!(", filter \"{}\"", ui.filter)
            }
        )));
    f.render_widget(cg_table, cg_area);
    if ui.expanded {
        let lines: Vec<Line> = match rows.get(selected).and_then(|r| r.state.offender.as_ref()) {
            Some(o) => process_tree(o.pid, 200)
                .into_iter()
                .map(|(depth, pid, state, comm)| {
                    Line::from(format!(
                        "{}{pid} {state} {comm}",
                        "  ".repeat(depth.min(12))
                    ))
                })
                .collect(),
            None => vec![Line::from("no offender for this cgroup")],
        };
        let area = ratatui::layout::Rect {
            height: mem_area.height + bottom.height,
            ..mem_area
        };
        f.render_widget(
            Paragraph::new(lines).block(
                Block::default()
                    .borders(Borders::TOP)
                    .title(" process tree of the selected offender (enter: back) "),
            ),
            area,
        );
    } else {
        let mem_rows: Vec<Row> = pools
            .iter()
            .map(|p| {
                Row::new(vec![
                    short(&p.state.pool, cg_w),
                    mib(p.state.bytes),
                    mib(p.state.limit_bytes),
                    eta_text(p.state.eta_secs),
                    sparkline(&p.spark, spark_w),
                ])
            })
            .collect();
        f.render_widget(
            Table::new(
                mem_rows,
                [
                    Constraint::Length(cg_w as u16),
                    Constraint::Length(7),
                    Constraint::Length(7),
                    Constraint::Length(7),
                    Constraint::Min(10),
                ],
            )
            .header(
                Row::new(["MEMORY POOL", "USED", "LIMIT", "ETA", "TREND"])
                    .style(style(Style::default().bold())),
            )
            .block(Block::default().borders(Borders::TOP).title(" memory ")),
            mem_area,
        );
        let [left, right] =
            Layout::horizontal([Constraint::Percentage(65), Constraint::Percentage(35)])
                .areas(bottom);
        let told: Vec<Line> = model
            .told
            .iter()
            .rev()
            .take(bottom.height as usize)
            .map(|t| {
                let line = Line::from(format!("{} {}", t.time, t.text));
                if t.critical {
                    line.style(style(Style::default().red()))
                } else {
                    line
                }
            })
            .collect();
        f.render_widget(
            Paragraph::new(told).block(
                Block::default()
                    .borders(Borders::TOP)
                    .title(" alerts and actions "),
            ),
            left,
        );
        let blocked_lines: Vec<Line> = blocked
            .iter()
            .map(|b| {
                Line::from(format!(
                    "{} {} {}s {}",
                    b.pid,
                    b.comm,
                    b.blocked_ms / 1000,
                    b.wchan.as_deref().unwrap_or("-"),
                ))
            })
            .collect();
        f.render_widget(
            Paragraph::new(blocked_lines).block(
                Block::default()
                    .borders(Borders::TOP | Borders::LEFT)
                    .title(" blocked (D) "),
            ),
            right,
        );
    }
    let keys_text = if ui.editing {
        format!(" filter: {}▏ (enter: apply, esc: done)", ui.filter)
    } else {
        " q quit  s sort  / filter  ↑↓ select  enter tree  p pause".to_owned()
    };
    f.render_widget(Paragraph::new(keys_text), keys);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_cgroup_paths_keep_their_own_name() {
        assert_eq!(short("/sys/fs/cgroup/pids/a", 20), "/pids/a");
        let s = short(
            "/sys/fs/cgroup/pids/guard-test-123/runner-with-long-name",
            16,
        );
        assert_eq!(s.chars().count(), 16);
        assert!(s.ends_with("with-long-name"), "{s}");
    }

    #[test]
    fn a_process_tree_from_proc_starts_at_its_root() {
        let me = std::process::id();
        let tree = process_tree(me, 50);
        assert_eq!(tree.first().map(|t| (t.0, t.1)), Some((0, me)));
    }
}
