//! `sources`: what each export of each provider came to last (admin credential): its last job's
//! result and counts, and where its next incremental pull starts (`_since`). `sync`: start a
//! registration's next pull now.
use reqwest::Method;
use serde_json::Value;

use super::{
    remote::{AdminArgs, Remote},
    report, Outcome,
};

#[derive(Debug, clap::Args)]
pub struct SourcesArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// Print the server's answer as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct SyncArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// The registration's client_id (its sync plan names the export).
    client_id: String,
}

/// Start the registration's next pull; print the job's status URL (follow it with `status`).
pub async fn sync(args: SyncArgs) -> Outcome {
    let run = async {
        let remote = Remote::admin(&args.admin)?;
        let path = format!("/admin/sync/{}", urlencode(&args.client_id));
        remote.json(remote.request(Method::POST, &path)).await
    };
    match run.await {
        Ok(answer) => {
            println!("sync pull started: {}", answer["status_url"].as_str().unwrap_or("?"));
            Outcome::Done
        }
        Err(e) => report(&e),
    }
}

/// A client id as one path segment.
fn urlencode(raw: &str) -> String {
    raw.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

pub async fn list(args: SourcesArgs) -> Outcome {
    let run = async {
        let remote = Remote::admin(&args.admin)?;
        remote.json(remote.request(Method::GET, "/admin/sync")).await
    };
    match run.await {
        Ok(answer) if args.json => {
            println!("{answer}");
            Outcome::Done
        }
        Ok(answer) => {
            let sources = answer["sources"].as_array().cloned().unwrap_or_default();
            if sources.is_empty() {
                println!("no exports imported yet");
            }
            for s in &sources {
                println!("{}", describe(s));
            }
            Outcome::Done
        }
        Err(e) => report(&e),
    }
}

fn describe(s: &Value) -> String {
    let text = |v: &Value| v.as_str().unwrap_or("?").to_string();
    let mut line = format!("{}  {}", text(&s["client_id"]), text(&s["export_url"]));
    if let Some(types) = s["types"].as_str() {
        line.push_str(&format!(" _type={types}"));
    }
    if let Some(filters) = s["type_filters"].as_str() {
        line.push_str(&format!(" _typeFilter={filters}"));
    }
    line.push_str(&format!(
        "\n  last {} at {}: {} files ({} failed), {} resources; next pull from {}",
        text(&s["last_result"]),
        text(&s["last_at"]),
        s["files"],
        s["failed_files"],
        s["resources"],
        s["since"].as_str().unwrap_or("the beginning"),
    ));
    line
}
