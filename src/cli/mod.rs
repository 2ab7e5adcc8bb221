//! The command line: one binary that serves (the default, so `cargo run --release` still does)
//! and runs operator commands, against a running server over HTTP or locally. Exit codes: 0 done,
//! 1 failed, 2 wrong usage (clap's), 3 an import completed with errors.
pub mod jobs;
pub mod keygen;
pub mod ping;
pub mod provide;
pub mod registrations;
pub mod remote;
pub mod resources;
pub mod sources;
pub mod submissions;

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
    /// Register a provider at a running server (admin credential), or `--offline` into its database.
    Register(Box<registrations::RegisterArgs>),
    /// List a running server's provider registrations (admin credential).
    Registrations(registrations::ListArgs),
    /// Revoke a registration (admin credential): its tokens and pings are refused from then on.
    Revoke(registrations::RevokeArgs),
    /// Act as a provider: get a token, ping `$import`, and optionally follow the job.
    Ping(ping::PingArgs),
    /// A job's status; `--follow` shows live progress until it ends.
    Status(jobs::StatusArgs),
    /// List a running server's import jobs (admin credential).
    Jobs(jobs::JobsArgs),
    /// List a running server's Bulk Submit submissions with their manifests (admin credential).
    Submissions(submissions::SubmissionsArgs),
    /// What each export of each provider came to last, and where its next incremental pull starts.
    Sources(sources::SourcesArgs),
    /// Start a registration's next incremental pull now (its sync plan), as its schedule would.
    Sync(sources::SyncArgs),
    /// What the resource store holds: resources per provider and type (admin credential).
    Resources(resources::ResourcesArgs),
    /// Show the audit trail: registrations, pings accepted and refused, cancels, deletes.
    Audit(registrations::AuditArgs),
    /// Cancel a running job; it stays listed as cancelled until it expires.
    Cancel(jobs::DeleteArgs),
    /// Delete a job and its files (cancelling it if it runs).
    Delete(jobs::DeleteArgs),
    /// Serve a directory of NDJSON files as a static Bulk Data export, to import your own test data.
    Provide(provide::Args),
}

/// How a command ended, as the process exit code tells it.
pub enum Outcome {
    Done,
    Failed,
    /// An import completed, but some files failed or the provider reported errors.
    Partial,
    /// `status` of an import still running: not done, not failed.
    Running,
}

impl Outcome {
    pub fn code(&self) -> std::process::ExitCode {
        match self {
            Outcome::Done => std::process::ExitCode::SUCCESS,
            Outcome::Failed => std::process::ExitCode::FAILURE,
            Outcome::Partial => std::process::ExitCode::from(3),
            Outcome::Running => std::process::ExitCode::from(4),
        }
    }
}

/// Print a command's failure with its causes, for people.
pub fn report(e: &dyn std::error::Error) -> Outcome {
    eprintln!("error: {}", crate::error_text::chain(e));
    Outcome::Failed
}
