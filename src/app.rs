//! Building and running the server: bind (port 0 is fine), state, resumed jobs, reaper, shutdown.
use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    auth::{
        failure_limit::AuthFailures,
        jwks_cache::JwksCache,
        keys::{KeyVault, Keys},
        provider_token::ProviderTokens,
    },
    config::Config,
    http_client, http_server, instance_id,
    jobs::{context::JobContext, reaper, request_budget::Budgets, resume, runner::Runner, takeover},
    owner_only, routes,
    state::AppState,
    store::backend::Stores,
};

/// How long shutdown waits for running jobs to stop (they resume on the next start).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);
/// How long open connections get to finish their request at shutdown.
const CONNECTION_DRAIN: Duration = Duration::from_secs(5);

pub struct App {
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
}

impl App {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        // Owner-only whatever the umask: DATA_DIR holds keys (and SQLite's database), JOBS_PATH
        // the imported health data.
        owner_only::dir(&config.data_dir)
            .with_context(|| format!("cannot create DATA_DIR {}", config.data_dir.display()))?;
        owner_only::dir(&config.jobs_path)
            .with_context(|| format!("cannot create JOBS_PATH {}", config.jobs_path.display()))?;
        // Keys first on one machine (a full disk then names the key file, and leaves no database
        // behind); a shared database first, as the keys may be kept in it.
        let open_stores = || async {
            Stores::open(&config.database)
                .await
                .with_context(|| format!("opening the database ({})", config.database.describe()))
        };
        let (stores, keys) = if config.database.is_shared() {
            let stores = open_stores().await?;
            let vault = match &stores.secrets {
                Some(shared) => KeyVault::Database { shared: &**shared, seed: &config.data_dir },
                None => KeyVault::Files(&config.data_dir),
            };
            let keys = Keys::load(&config, vault).await.context("loading keys")?;
            (stores, keys)
        } else {
            let keys =
                Keys::load(&config, KeyVault::Files(&config.data_dir)).await.context("loading keys")?;
            (open_stores().await?, keys)
        };
        let keys = Arc::new(keys);
        let outbound = Arc::new(
            http_client::Outbound::new(&config.limits, config.dns_overrides.clone())
                .context("building the HTTP client")?,
        );
        let http = outbound.trusted();
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let built = config
            .destination
            .build(config.jobs_path.clone(), config.checkpoint_bytes, metrics.clone())
            .await
            .context("setting up the destination")?;
        let destination = built.destination;
        let shutdown = CancellationToken::new();
        let jobs = Arc::new(
            Runner::new(
                instance_id::load_or_create(&config.data_dir)
                    .context("reading this instance's id from DATA_DIR")?,
                shutdown.clone(),
                config.limits.max_concurrent_jobs,
                (config.limits.max_total_downloads, config.limits.max_downloads_per_provider),
            )
            .context("starting the job runtime")?,
        );
        // Checked before anything listens: connections must fit beside the jobs' descriptors.
        let mut config = config;
        http_server::fit_to_descriptors(
            &mut config.server,
            http_server::reserved_descriptors(config.limits.max_total_downloads),
        )?;
        let addr = format!("{}:{}", config.host, config.port);
        let listener = TcpListener::bind(&addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        let config = Arc::new(config);
        let job_context = JobContext {
            provider_tokens: Arc::new(ProviderTokens::new(http.clone(), keys.clone())),
            request_budget: Budgets::new(
                (config.limits.provider_requests_per_minute, config.limits.provider_request_burst),
                config.limits.submit_manifests_per_minute,
            ),
            outbound,
            config: config.clone(),
            store: stores.jobs.clone(),
            providers: stores.registrations.clone(),
            submissions: stores.submissions.clone(),
            sync: stores.sync.clone(),
            exclusive: stores.exclusive.clone(),
            http: http.clone(),
            destination,
            jobs,
            metrics,
            sync_starts: Arc::default(),
            notifier: match (&config.notify_url, keys.notify_secret()) {
                (Some(url), Some(secret)) => Some(Arc::new(crate::notify::Notifier::new(
                    url.clone(),
                    secret.clone(),
                    http.clone(),
                    config.public_url.clone(),
                    config.notify_first_retry,
                ))),
                _ => None,
            },
        };
        let state = AppState {
            jwks: Arc::new(JwksCache::new(config.limits.jwks_fetch_timeout, config.limits.jwks_min_refetch)),
            auth_failures: Arc::new(AuthFailures::new(config.limits.max_auth_failures)),
            submit_budget: Arc::new(crate::window_budget::WindowBudget::new(
                config.limits.submit_requests_per_minute,
            )),
            key_generator: Arc::new(crate::key_generator::Generator::new(config.limits.generator_per_minute)),
            config,
            registrations: stores.registrations,
            audit: stores.audit,
            replay: stores.replay,
            http,
            keys,
            resources: built.store,
            job_context,
        };
        Ok(Self { listener, state, shutdown })
    }

    /// The services jobs use, for embedding (tests, a command line running jobs in-process).
    pub fn job_context(&self) -> JobContext {
        self.state.job_context.clone()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// Serve until `signal` resolves, then stop jobs and the reaper gracefully.
    pub async fn run(self, signal: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let Self { listener, state, shutdown } = self;
        // If this future is dropped (an embedding test ends), jobs still stop.
        let _stop_jobs_on_drop = shutdown.clone().drop_guard();
        tracing::info!(
            address = %listener.local_addr()?,
            destination = %state.job_context.destination.describe(),
            "bulk-import listening"
        );
        if state.config.public_url.is_none()
            && !matches!(state.config.host.as_str(), "127.0.0.1" | "localhost" | "::1")
        {
            // Without it the token `aud` we accept follows the Host header, so an assertion made
            // for another server that trusts the same key could be replayed here.
            tracing::warn!("PUBLIC_URL is not set: our URLs and the token audience come from each request's Host header; set PUBLIC_URL in production");
        }
        if state.config.database.is_shared() && !state.job_context.destination.shared() {
            // A job taken over by another replica would write to that replica's disk.
            tracing::warn!("DATABASE_URL is shared by replicas but DESTINATION_TYPE keeps data on this machine (tmp-fs, or a resource store on SQLite): each replica writes to its own disk; use s3, or a resource store on PostgreSQL, when several replicas run");
        }
        tracing::info!(database = %state.config.database.describe(), owner = %state.job_context.jobs.owner, "state");
        resume::resume_unfinished(&state.job_context).await?;
        let jobs = state.job_context.jobs.clone();
        jobs.tracker.spawn(reaper::run(state.job_context.clone()));
        let every = state.job_context.config.sync_check_interval;
        jobs.tracker.spawn(crate::sync_runs::schedule(state.job_context.clone(), every));
        // Jobs whose process stopped renewing their lease (or never got to them) are taken up.
        jobs.tracker.spawn(takeover::run(state.job_context.clone()));

        let router = routes::router(state.clone());
        let stop = shutdown.clone();
        tokio::spawn(async move {
            signal.await;
            stop.cancel();
        });
        http_server::serve(listener, router, state.config.server.clone(), shutdown.clone(), CONNECTION_DRAIN)
            .await;
        jobs.tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, jobs.tracker.wait()).await.is_err() {
            tracing::warn!("jobs did not stop in time; they resume on the next start");
        }
        tracing::info!("stopped");
        Ok(())
    }
}
