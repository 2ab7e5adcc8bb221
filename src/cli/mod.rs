//! The command line: one binary that serves (the default, so `cargo run --release` still does)
//! and runs operator commands against the library's services. Exit codes: 0 done, 1 failed,
//! 2 wrong usage (clap's).
pub mod keygen;

use clap::{Parser, Subcommand};

/// A FHIR Bulk Data import consumer: providers ping `/$import`, it pulls their export and stores
/// every file. With no command it serves.
#[derive(Debug, Parser)]
#[command(name = "bulk-import", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (settings from the environment and `.env`; see example.env).
    Serve,
    /// Make a key pair (JWK and PEM files, owner-only), e.g. for a provider to sign with.
    Keygen(keygen::Args),
}

/// How a command ended, as the process exit code tells it.
pub enum Outcome {
    Done,
    Failed,
}

impl Outcome {
    pub fn code(&self) -> std::process::ExitCode {
        match self {
            Outcome::Done => std::process::ExitCode::SUCCESS,
            Outcome::Failed => std::process::ExitCode::FAILURE,
        }
    }
}

/// Print a command's failure with its causes, for people.
pub fn report(e: &dyn std::error::Error) -> Outcome {
    eprintln!("error: {}", crate::error_text::chain(e));
    Outcome::Failed
}
