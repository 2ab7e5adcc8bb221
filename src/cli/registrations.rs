//! `register` and `registrations`: provider registrations on a running server, with the admin
//! credential. `register` prints what to hand the provider's team.
use std::path::PathBuf;

use serde_json::{json, Value};

use super::{
    remote::{AdminArgs, Remote, RemoteError},
    report, Outcome,
};

#[derive(Debug, clap::Args)]
pub struct RegisterArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// The provider's FHIR base URL (its exports must lie under it).
    #[arg(long)]
    aud: String,
    /// Our client id at the provider (what the provider registered us as).
    #[arg(long)]
    consumer_client_id: String,
    /// The provider's JWKS URL, which it signs its assertions with.
    #[arg(long, conflicts_with = "jwks_file", required_unless_present = "jwks_file")]
    jwks_uri: Option<String>,
    /// A file holding the provider's public JWKS (e.g. from `keygen`).
    #[arg(long)]
    jwks_file: Option<PathBuf>,
    /// The scope we ask the provider for (default PROVIDER_SCOPE).
    #[arg(long)]
    scope: Option<String>,
    /// Another origin that may receive our provider token (repeat for more).
    #[arg(long = "token-origin")]
    token_origins: Vec<String>,
    /// Only these origins (besides the provider's) may serve files (repeat for more).
    #[arg(long = "file-origin")]
    file_origins: Vec<String>,
    /// The provider's token endpoint, for providers without discovery.
    #[arg(long)]
    token_endpoint: Option<String>,
    /// A display name for people ("St. Mary's Epic").
    #[arg(long)]
    name: Option<String>,
    /// The Bulk Submit submitter this provider's submissions name: its identifier value.
    #[arg(long)]
    submitter: Option<String>,
    /// The system of that identifier.
    #[arg(long, requires = "submitter")]
    submitter_system: Option<String>,
    /// A sync plan: the provider export this server pulls itself (`sync`, and on a schedule
    /// with --sync-every), each time from where the last whole import ended (`_since`).
    #[arg(long)]
    sync_url: Option<String>,
    /// `_type` of those pulls (comma-separated resource types).
    #[arg(long, requires = "sync_url")]
    sync_type: Option<String>,
    /// `_typeFilter` of those pulls.
    #[arg(long, requires = "sync_url")]
    sync_type_filter: Option<String>,
    /// Seconds between scheduled pulls (the first is due at once); without it, only `sync` pulls.
    #[arg(long, requires = "sync_url")]
    sync_every: Option<i64>,
    /// Write into the server's database (DATA_DIR, settings from the environment and `.env`)
    /// instead of asking a running server; for setting up before the first start.
    #[arg(long)]
    offline: bool,
    /// Print the server's answer as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// Print the server's answer as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, thiserror::Error)]
enum RegisterError {
    #[error("cannot read the JWKS file {}", path.display())]
    JwksFile { path: PathBuf, source: std::io::Error },
    #[error("the JWKS file {} is not JSON", path.display())]
    JwksJson { path: PathBuf, source: serde_json::Error },
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error("the settings are invalid")]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot open the database")]
    Store(#[from] crate::store::StoreError),
    #[error("cannot create {} owner-only", path.display())]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("the registration was refused: {0}")]
    Refused(#[from] crate::registrations::RegistrationError),
    #[error("the registration request is not valid")]
    Request(#[source] serde_json::Error),
}

pub async fn register(args: RegisterArgs) -> Outcome {
    match try_register(&args).await {
        Ok(text) => {
            println!("{text}");
            Outcome::Done
        }
        Err(e) => report(&e),
    }
}

async fn try_register(args: &RegisterArgs) -> Result<String, RegisterError> {
    let jwks = match &args.jwks_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|source| RegisterError::JwksFile { path: path.clone(), source })?;
            Some(
                serde_json::from_str::<Value>(&text)
                    .map_err(|source| RegisterError::JwksJson { path: path.clone(), source })?,
            )
        }
        None => None,
    };
    let mut body = json!({ "aud": args.aud, "consumer_client_id": args.consumer_client_id });
    let fields = [
        ("jwks", jwks),
        ("jwks_uri", args.jwks_uri.clone().map(Value::from)),
        ("scope", args.scope.clone().map(Value::from)),
        ("token_endpoint", args.token_endpoint.clone().map(Value::from)),
        ("name", args.name.clone().map(Value::from)),
        ("token_origins", (!args.token_origins.is_empty()).then(|| json!(args.token_origins))),
        ("file_origins", (!args.file_origins.is_empty()).then(|| json!(args.file_origins))),
        (
            "submitter",
            args.submitter.as_ref().map(|value| json!({"system": args.submitter_system, "value": value})),
        ),
        ("sync", args.sync_url.as_ref().map(|url| sync_plan(url, args))),
    ];
    for (name, value) in fields {
        if let Some(v) = value {
            body[name] = v;
        }
    }
    let (answer, remote) = if args.offline {
        register_offline(body, &args.admin.server.server, &args.admin.data_dir).await?
    } else {
        let remote = Remote::admin(&args.admin)?;
        let req = remote.request(reqwest::Method::POST, "/auth/register").json(&body);
        (remote.json(req).await?, remote)
    };
    if args.json {
        return Ok(answer.to_string());
    }
    let client_id = answer["client_id"].as_str().unwrap_or_default();
    let token_endpoint =
        answer["token_endpoint"].as_str().map(str::to_string).unwrap_or_else(|| remote.url("/auth/token"));
    let warnings: String = answer["warnings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|w| format!("\nwarning: {w}"))
        .collect();
    Ok(format!(
        "registered {aud} as client_id {client_id}{warnings}\n\nhand this to the provider's team:\n  ping URL (POST, FHIR Parameters): {import}\n  token endpoint: {token_endpoint}\n  client_id: {client_id}\n  scope to request: system/*.write (SMART v1) or system/*.cud (v2)\n  sign the client assertion with the private key of the JWKS you registered\n\nand register us at the provider: our JWKS is {jwks} (client id {consumer})",
        aud = args.aud,
        import = remote.url("/$import"),
        jwks = remote.url("/jwks"),
        consumer = args.consumer_client_id,
    ))
}

/// Register straight into the database the server uses (it may be running: SQLite takes the
/// write between its own; PostgreSQL is shared anyway). The answer has the endpoint's shape; URLs are PUBLIC_URL's,
/// else `--server`'s.
async fn register_offline(
    body: Value,
    server: &str,
    data_dir: &std::path::Path,
) -> Result<(Value, Remote), RegisterError> {
    let mut config = crate::config::Config::from_env()?;
    // `--data-dir`, else DATA_DIR (from the environment or `.env`, which main loaded); a
    // DATABASE_URL of PostgreSQL is used as it is.
    config.set_data_dir(data_dir.to_path_buf());
    let request = serde_json::from_value(body).map_err(RegisterError::Request)?;
    crate::owner_only::dir(&config.data_dir)
        .map_err(|source| RegisterError::DataDir { path: config.data_dir.clone(), source })?;
    let stores = crate::store::backend::Stores::open(&config.database).await?;
    let registered = crate::registrations::create(&*stores.registrations, request).await?;
    let p = &registered.provider;
    crate::audit::record(
        &*stores.audit,
        crate::audit::Actor::LocalCli,
        "registration created",
        Some(&p.client_id),
        Some(&p.aud),
    )
    .await;
    let base = config.public_url.as_ref().map_or(server, |u| u.as_str());
    let remote = Remote::new(&super::remote::ServerArgs { server: base.to_string() });
    let answer = crate::registrations::created_answer(p, remote.url("/auth/token"), &registered.warnings);
    Ok((answer, remote))
}

pub async fn list(args: ListArgs) -> Outcome {
    let run = async {
        let remote = Remote::admin(&args.admin)?;
        remote.json(remote.request(reqwest::Method::GET, "/auth/registrations")).await
    };
    match run.await {
        Ok(answer) if args.json => {
            println!("{answer}");
            Outcome::Done
        }
        Ok(answer) => {
            let list = answer
                .get("registrations")
                .or(Some(&answer))
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if list.is_empty() {
                println!("no registrations");
            }
            for r in list {
                let revoked = if r["revoked_at"].is_null() { "" } else { " (revoked)" };
                let name = r["name"].as_str().map(|n| format!("  \"{n}\"")).unwrap_or_default();
                println!(
                    "{}  {}{name}{revoked}",
                    r["client_id"].as_str().unwrap_or("?"),
                    r["aud"].as_str().unwrap_or("?")
                );
            }
            Outcome::Done
        }
        Err(e) => report(&e),
    }
}

#[derive(Debug, clap::Args)]
pub struct RevokeArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// The registration's client_id (as `registrations` lists it).
    client_id: String,
}

/// `revoke`: revoke a registration: its tokens stop working and its running jobs stop.
pub async fn revoke(args: RevokeArgs) -> Outcome {
    let run = async {
        let remote = Remote::admin(&args.admin)?;
        let path = format!("/auth/registrations/{}", url_segment(&args.client_id));
        remote.json(remote.request(reqwest::Method::DELETE, &path)).await
    };
    match run.await {
        Ok(answer) => {
            println!(
                "revoked {} ({}): its tokens no longer work; pings from it are refused",
                answer["client_id"].as_str().unwrap_or(&args.client_id),
                answer["aud"].as_str().unwrap_or("?")
            );
            Outcome::Done
        }
        Err(e) => report(&e),
    }
}

/// `s` as one URL path segment.
fn url_segment(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// Which events: all, refused (refused pings only) or others (all but refused pings).
    #[arg(long, default_value = "all", value_parser = ["all", "refused", "others"])]
    kind: String,
    /// Print the server's answer as JSON.
    #[arg(long)]
    json: bool,
}

/// `audit`: the newest audit events (registrations, pings accepted and refused, cancels, deletes).
pub async fn audit(args: AuditArgs) -> Outcome {
    let run = async {
        let remote = Remote::admin(&args.admin)?;
        let path = format!("/admin/audit?kind={}", args.kind);
        remote.json(remote.request(reqwest::Method::GET, &path)).await
    };
    match run.await {
        Ok(answer) if args.json => {
            println!("{answer}");
            Outcome::Done
        }
        Ok(answer) => {
            for e in answer["events"].as_array().cloned().unwrap_or_default() {
                let text = |k: &str| e[k].as_str().unwrap_or("").to_string();
                let detail =
                    if e["detail"].is_string() { format!(": {}", text("detail")) } else { String::new() };
                println!("{}  {}  {} {}{detail}", text("at"), text("actor"), text("action"), text("subject"));
            }
            Outcome::Done
        }
        Err(e) => report(&e),
    }
}

/// The registration's `sync` field from the `--sync-*` options.
fn sync_plan(url: &str, args: &RegisterArgs) -> Value {
    let mut plan = json!({ "export_url": url });
    let fields = [
        ("type", args.sync_type.clone().map(Value::from)),
        ("type_filter", args.sync_type_filter.clone().map(Value::from)),
        ("every_seconds", args.sync_every.map(Value::from)),
    ];
    for (name, value) in fields {
        if let Some(v) = value {
            plan[name] = v;
        }
    }
    plan
}
