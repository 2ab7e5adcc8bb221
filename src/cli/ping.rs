//! `ping`: act as a provider to test a setup end to end. Sign a SMART Backend Services client
//! assertion with the provider's key, get a token from our token endpoint, send the `$import`
//! ping, and (with `--follow`) follow the job to its end.
use std::{
    path::PathBuf,
    time::{Duration, SystemTime},
};

use josekit::{
    jwk::Jwk,
    jws::JwsHeader,
    jwt::{self, JwtPayload},
};
use reqwest::{header, StatusCode};
use serde_json::json;

use super::{
    jobs::{follow, print_summary, FollowError},
    remote::{refusal, Remote, RemoteError, ServerArgs},
    report, Outcome,
};

/// How long the client assertion is valid (SMART: at most five minutes).
const ASSERTION_LIFETIME: Duration = Duration::from_secs(300);

#[derive(Debug, clap::Args)]
pub struct PingArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The provider's client_id here (what `register` printed).
    #[arg(long)]
    client_id: String,
    /// The provider's private key as a JWK file (e.g. `keygen`'s STEM.private.jwk.json).
    #[arg(long)]
    key: PathBuf,
    /// The export to pull: a `$export` kick-off URL (dynamic) or a manifest URL (static).
    #[arg(long)]
    export_url: String,
    /// `dynamic` (we kick the export off) or `static` (the manifest is there already).
    #[arg(long, default_value = "dynamic", value_parser = ["dynamic", "static"])]
    export_type: String,
    /// Resource types for a dynamic export, e.g. Patient,Observation.
    #[arg(long = "type")]
    types: Option<String>,
    /// The scope to ask our token endpoint for.
    #[arg(long, default_value = "system/*.write")]
    scope: String,
    /// Follow the job, with a progress bar, until it ends.
    #[arg(long)]
    follow: bool,
    /// Seconds `--follow` waits at most.
    #[arg(long, default_value_t = 24 * 3600)]
    timeout: u64,
    /// Print results as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, thiserror::Error)]
enum PingError {
    #[error("cannot read the key file {}", path.display())]
    KeyFile { path: PathBuf, source: std::io::Error },
    #[error("the key file {} is not a private JWK", path.display())]
    Key { path: PathBuf, source: josekit::JoseError },
    #[error("the client assertion could not be signed")]
    Sign(#[source] josekit::JoseError),
    #[error("the token endpoint gave no access_token")]
    NoToken,
    #[error("the ping was accepted but the answer named no status URL (Content-Location)")]
    NoLocation,
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error(transparent)]
    Follow(#[from] FollowError),
}

pub async fn run(args: PingArgs) -> Outcome {
    match ping(&args).await {
        Ok(outcome) => outcome,
        Err(e) => report(&e),
    }
}

async fn ping(args: &PingArgs) -> Result<Outcome, PingError> {
    let remote = Remote::new(&args.server);
    let key_bytes =
        std::fs::read(&args.key).map_err(|source| PingError::KeyFile { path: args.key.clone(), source })?;
    let key =
        Jwk::from_bytes(&key_bytes).map_err(|source| PingError::Key { path: args.key.clone(), source })?;
    let token_url = remote.url("/auth/token");
    let assertion = sign_assertion(&key, &args.client_id, &token_url)?;
    let form = [
        ("grant_type", "client_credentials"),
        ("scope", args.scope.as_str()),
        ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
        ("client_assertion", assertion.as_str()),
    ];
    let token = remote.json(remote.http.post(&token_url).form(&form)).await?;
    let access_token = token["access_token"].as_str().ok_or(PingError::NoToken)?;

    let mut parameter = vec![
        json!({"name": "exportUrl", "valueUrl": args.export_url}),
        json!({"name": "exportType", "valueCode": args.export_type}),
    ];
    if let Some(types) = &args.types {
        parameter.push(json!({"name": "_type", "valueString": types}));
    }
    let body = json!({"resourceType": "Parameters", "parameter": parameter});
    let req = remote
        .http
        .post(remote.url("/$import"))
        .bearer_auth(access_token)
        .header(header::CONTENT_TYPE, "application/fhir+json")
        .header(header::ACCEPT, "application/fhir+json")
        .header("prefer", "respond-async")
        .body(body.to_string());
    let res = remote.send(req).await?;
    if res.status() != StatusCode::ACCEPTED {
        return Err(refusal(res).await.into());
    }
    let location = res
        .headers()
        .get(header::CONTENT_LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .ok_or(PingError::NoLocation)?;
    if !args.follow {
        if args.json {
            println!("{}", json!({ "status_url": location }));
        } else {
            println!("accepted: {location}");
        }
        return Ok(Outcome::Done);
    }
    // On stderr, so `--json` output stays one document.
    eprintln!("accepted: {location}");
    let ended = follow(&remote, &location, Duration::from_secs(args.timeout)).await?;
    print_summary(&remote, &ended, args.json).await;
    Ok(ended.outcome())
}

/// A SMART Backend Services client assertion: iss = sub = client_id, aud = the token endpoint,
/// a fresh jti, five minutes to live, signed with the key's own alg (ES384 if it names none).
fn sign_assertion(key: &Jwk, client_id: &str, token_url: &str) -> Result<String, PingError> {
    let alg = key.algorithm().unwrap_or("ES384").to_string();
    let mut claims = JwtPayload::new();
    claims.set_issuer(client_id);
    claims.set_subject(client_id);
    claims.set_audience(vec![token_url]);
    claims.set_jwt_id(crate::auth::keys::random_hex(16));
    let now = SystemTime::now();
    crate::time_util::set_times(&mut claims, now, now + ASSERTION_LIFETIME).map_err(PingError::Sign)?;
    let mut header = JwsHeader::new();
    header.set_token_type("JWT");
    if let Some(kid) = key.key_id() {
        header.set_key_id(kid);
    }
    let signer = crate::auth::algorithms::signer(&alg, key).map_err(PingError::Sign)?;
    jwt::encode_with_signer(&claims, &header, &*signer).map_err(PingError::Sign)
}
