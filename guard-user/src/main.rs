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
    args.config_file = file.path.clone().map(|p| (p, file.args.clone()));
    if let Some(guard::cli::Command::Config) = args.command {
        print!("{}", guard::cli::config::render(&command, &matches, &file));
        return ExitCode::SUCCESS;
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
            return match clap_mangen::Man::new(Args::command()).render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("guard: error: writing the man page: {err}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Command::Config) | None => {}
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
