//! `guard`: parses flags, sets up diagnostics on stderr, runs the agent.

use std::{io::IsTerminal as _, process::ExitCode};

use clap::Parser as _;
use guard::{
    agent::{self, Ending},
    cli::Args,
};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let args = Args::parse();
    let level = match args.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level)),
        )
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

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
