//! Talking to a running server: its URL, the admin credential for operator commands, and errors
//! that say what the server answered.
use std::path::PathBuf;

use reqwest::{Response, StatusCode};
use serde_json::Value;

/// Where the server is.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// The server's base URL.
    #[arg(long, env = "BULK_IMPORT_URL", default_value = "http://127.0.0.1:3001")]
    pub server: String,
}

/// The server and the admin credential.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// The admin credential; else ADMIN_TOKEN; else the one the server generated into DATA_DIR.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Where a local server keeps its data (for its generated admin-token file).
    #[arg(long, env = "DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("cannot reach the server at {url}")]
    Unreachable { url: String, source: reqwest::Error },
    #[error("the server answered {status}: {message}")]
    Refused { status: StatusCode, message: String },
    #[error("the server's answer is not what was expected")]
    Unreadable(#[from] reqwest::Error),
    #[error("{0}")]
    NoSuchJob(String),
    #[error("no admin credential: pass --admin-token, set ADMIN_TOKEN, or run where the server's DATA_DIR ({0}) holds admin-token")]
    NoAdminToken(String),
}

pub struct Remote {
    pub base: String,
    pub http: reqwest::Client,
    admin_token: Option<String>,
}

impl Remote {
    pub fn new(server: &ServerArgs) -> Self {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(60))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Self { base: server.server.trim_end_matches('/').to_string(), http, admin_token: None }
    }

    pub fn admin(args: &AdminArgs) -> Result<Self, RemoteError> {
        let file = args.data_dir.join("admin-token");
        let token = match &args.admin_token {
            Some(t) if !t.trim().is_empty() => t.trim().to_string(),
            _ => std::fs::read_to_string(&file)
                .map(|t| t.trim().to_string())
                .map_err(|_| RemoteError::NoAdminToken(args.data_dir.display().to_string()))?,
        };
        Ok(Self { admin_token: Some(token), ..Self::new(&args.server) })
    }

    /// The server, with the admin credential when one is at hand (for job links that need it,
    /// such as a Bulk Submit job's); none is not an error.
    pub fn admin_if_known(args: &AdminArgs) -> Self {
        Self::admin(args).unwrap_or_else(|_| Self::new(&args.server))
    }

    pub fn has_admin(&self) -> bool {
        self.admin_token.is_some()
    }

    /// A request to `url`, with the admin credential only if `url` is on this server.
    pub fn to(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, url);
        match &self.admin_token {
            Some(t) if url.starts_with(&format!("{}/", self.base)) => req.bearer_auth(t),
            _ => req,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request with the admin credential, if this remote has one.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, self.url(path));
        match &self.admin_token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> Result<Response, RemoteError> {
        req.send().await.map_err(|source| RemoteError::Unreachable { url: self.base.clone(), source })
    }

    /// The JSON of a successful answer; an error status becomes `Refused` with the server's words.
    pub async fn json(&self, req: reqwest::RequestBuilder) -> Result<Value, RemoteError> {
        let res = self.send(req).await?;
        if !res.status().is_success() {
            return Err(refusal(res).await);
        }
        Ok(res.json().await?)
    }
}

/// What an error answer says: an OAuth `error_description`, an OperationOutcome's diagnostics, or
/// the body's text.
pub async fn refusal(res: Response) -> RemoteError {
    let status = res.status();
    let text = res.text().await.unwrap_or_default();
    let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let message = json
        .get("error_description")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| crate::fhir::operation_outcome::OperationOutcome::summarize(text.as_bytes()))
        .unwrap_or_else(|| text.chars().take(300).collect());
    RemoteError::Refused { status, message }
}
