//! `guard`: parses flags, sets up diagnostics on stderr, runs the agent.

use std::{io::IsTerminal as _, process::ExitCode};

use clap::{CommandFactory as _, FromArgMatches as _};
use guard::{
    agent::{self, Ending},
    cli::{Args, Command},
};
use tracing_subscriber::EnvFilter;

/// Diagnostics go to stderr; under systemd (JOURNAL_STREAM set: stderr is
/// the journal) to the journal directly, with their priorities, by the
/// `tracing-journald` crate.
fn init_diagnostics(level: &str) {
    use tracing_subscriber::{layer::SubscriberExt as _, util::SubscriberInitExt as _};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let journal = std::env::var_os("JOURNAL_STREAM")
        .and_then(|_| tracing_journald::layer().ok())
        .map(|layer| layer.with_syslog_identifier("guard".into()));
    match journal {
        Some(journal) => tracing_subscriber::registry()
            .with(filter)
            .with(journal)
            .init(),
        None => tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(filter)
            .with_target(false)
            .with_ansi(std::io::stderr().is_terminal() && !guard::cli::no_color_env())
            .init(),
    }
}

/// `guard config [--check]`.
fn config(
    args: &Args,
    check: bool,
    command: &clap::Command,
    matches: &clap::ArgMatches,
    file: &guard::cli::config::FromFile,
) -> ExitCode {
    if !check {
        print!("{}", guard::cli::config::render(command, matches, file));
        // What the policies match now: only where cgroups can be read.
        if !args.policies.is_empty() {
            match guard::host::cgroup::Hierarchies::discover()
                .map_err(|e| e.to_string())
                .and_then(|h| args.policies().map(|p| (h, p)))
            {
                Ok((hierarchies, policies)) => {
                    let dirs = hierarchies.directories(1_000_000);
                    let (text, warnings) =
                        guard::cli::config::describe_matches(&policies.matching(&dirs));
                    print!("\n{text}");
                    for warning in warnings {
                        eprintln!("guard: warning: {warning}");
                    }
                }
                Err(err) => eprintln!("guard: warning: {err} (guard config --check says more)"),
            }
        }
        return ExitCode::SUCCESS;
    }
    init_diagnostics("info");
    match guard::agent::check_config(args) {
        Ok(text) => {
            print!("{text}");
            println!(
                "guard config --check: the agent accepts this configuration ({})",
                file.path
                    .as_ref()
                    .map_or_else(|| "no config file".to_owned(), |p| p.display().to_string())
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("guard: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// `guard incidents [--json]`.
fn incidents(args: &Args, json: bool) -> ExitCode {
    use guard::output::report;
    let reports = match report::read_all(&args.incident_dir) {
        Ok(reports) => reports,
        Err(err) => {
            eprintln!("guard: error: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    if json {
        for r in &reports {
            println!("{}", serde_json::to_string(r).unwrap_or_default());
        }
    } else {
        println!("{}", report::summary_header());
        for r in &reports {
            println!("{}", report::summary_line(r));
        }
        if reports.is_empty() {
            eprintln!(
                "guard: no incident reports in {}",
                args.incident_dir.display()
            );
        }
    }
    ExitCode::SUCCESS
}

/// `guard incident ID [--json]`.
fn incident(args: &Args, id: &str, json: bool) -> ExitCode {
    use guard::output::report;
    let read = report::trusted_dir(&args.incident_dir, false)
        .and_then(|()| report::read(&args.incident_dir, id));
    match read {
        Ok(r) if json => {
            println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Ok(r) => {
            print!("{}", report::render(&r));
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("guard: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    // The config file's keys are flags placed before the command line's.
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let file = match guard::cli::config::locate(&argv).and_then(|path| match path {
        Some(path) => {
            guard::cli::config::load(&path, &Args::command(), guard::cli::config::insecure(&argv))
        }
        None => Ok(guard::cli::config::FromFile::default()),
    }) {
        Ok(file) => file,
        Err(err) => {
            eprintln!("guard: error: config file: {err}");
            return ExitCode::FAILURE;
        }
    };
    let command = Args::command().args_override_self(true);
    let matches = command
        .clone()
        .get_matches_from(guard::cli::config::merged_argv(&argv, &file));
    let mut args = match Args::from_arg_matches(&matches) {
        Ok(args) => args,
        Err(err) => err.exit(),
    };
    args.policies = file.policies.clone();
    args.config_file = file.path.clone().map(|p| (p, file.keys.clone()));
    if let Some(Command::Config { check }) = args.command {
        return config(&args, check, &command, &matches, &file);
    }
    match args.command {
        Some(Command::Check) => {
            let (table, runs) = guard::cli::check::report(&guard::cli::check::rows(&args.btf));
            print!("{table}");
            return if runs {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
        }
        Some(Command::Completions { shell }) => {
            clap_complete::generate(shell, &mut Args::command(), "guard", &mut std::io::stdout());
            return ExitCode::SUCCESS;
        }
        Some(Command::Schema { markdown }) => {
            let text = if markdown {
                guard::output::schema::markdown()
            } else {
                guard::output::schema::text()
            };
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Some(Command::Man) => {
            return match guard::cli::man::render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("guard: error: writing the man page: {err}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Command::Top { no_agent }) => {
            let mut agent_args = Vec::new();
            for cgroup in &args.cgroup {
                agent_args.push("--cgroup".into());
                agent_args.push(cgroup.clone().into_os_string());
            }
            let color = !guard::cli::no_color_env();
            return match guard::top::run(&args.socket, !no_agent, &agent_args, color) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("guard top: error: {err:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Command::Incidents { json }) => return incidents(&args, json),
        Some(Command::Incident { ref id, json }) => return incident(&args, id, json),
        Some(Command::Config { .. }) | None => {}
    }
    let level = match args.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    init_diagnostics(level);

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("guard: error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(agent::run(args)) {
        Ok(Ending::Signal | Ending::BrokenPipe) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("guard: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
