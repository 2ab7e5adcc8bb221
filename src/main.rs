//! Binary shim: load `.env`, start tracing, build the app and run it until a signal.
use bulk_import::{config::Config, telemetry, App};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // A missing .env is normal: every variable has an embedded default.
    let env_file = dotenvy::dotenv().ok();
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
