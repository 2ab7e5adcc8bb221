//! Binary shim: load `.env`, read the command line; serving starts tracing, builds the app and
//! runs it until a signal.
use std::process::ExitCode;

use bulk_import::{
    cli::{self, Cli, Command, Outcome},
    config::Config,
    telemetry, App,
};
use clap::Parser;

fn main() -> ExitCode {
    // Settings in `.env` reach the commands too (DATA_DIR, ADMIN_TOKEN, BULK_IMPORT_URL); a missing
    // `.env` is normal: every variable has an embedded default. Reading it creates nothing.
    let env_file = dotenvy::dotenv().ok();
    // `--help`, `--version` and usage errors end here (exit 0 or 2), before anything is created.
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(env_file),
        Command::Keygen(args) => cli::keygen::run(args),
        Command::Register(args) => remote(cli::registrations::register(*args)),
        Command::Registrations(args) => remote(cli::registrations::list(args)),
        Command::Revoke(args) => remote(cli::registrations::revoke(args)),
        Command::Ping(args) => remote(cli::ping::run(args)),
        Command::Status(args) => remote(cli::jobs::status(args)),
        Command::Jobs(args) => remote(cli::jobs::list(args)),
        Command::Submissions(args) => remote(cli::submissions::list(args)),
        Command::Sources(args) => remote(cli::sources::list(args)),
        Command::Sync(args) => remote(cli::sources::sync(args)),
        Command::Resources(args) => remote(cli::resources::list(args)),
        Command::Audit(args) => remote(cli::registrations::audit(args)),
        Command::Cancel(args) => remote(cli::jobs::cancel(args)),
        Command::Delete(args) => remote(cli::jobs::delete(args)),
        Command::Provide(args) => remote(cli::provide::run(args)),
    }
    .code()
}

/// Run a command that talks to a server.
fn remote(command: impl std::future::Future<Output = Outcome>) -> Outcome {
    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime.block_on(command),
        Err(e) => cli::report(&e),
    }
}

fn serve(env_file: Option<std::path::PathBuf>) -> Outcome {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => return cli::report(&e),
    };
    match runtime.block_on(run_server(env_file)) {
        Ok(()) => Outcome::Done,
        Err(e) => {
            // Logged too: a service manager shows the log, a terminal shows both.
            tracing::error!(error = format!("{e:#}"), "bulk-import stopped on an error");
            eprintln!("error: {e:#}");
            Outcome::Failed
        }
    }
}

async fn run_server(env_file: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    telemetry::init_tracing();
    if let Some(path) = env_file {
        tracing::info!(path = %path.display(), "loaded environment file");
    }
    let config = Config::from_env()?;
    let app = App::build(config).await?;
    app.run(shutdown_signal()).await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = terminate => {} }
    tracing::info!("shutdown signal received");
}
