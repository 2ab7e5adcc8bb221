//! `submissions`: a running server's Bulk Submit submissions (admin credential), each with its
//! status, progress and the manifests it named.
use reqwest::Method;
use serde_json::Value;

use super::{
    remote::{AdminArgs, Remote},
    report, Outcome,
};

#[derive(Debug, clap::Args)]
pub struct SubmissionsArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// Print the server's answer as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn list(args: SubmissionsArgs) -> Outcome {
    let run = async {
        let remote = Remote::admin(&args.admin)?;
        remote.json(remote.request(Method::GET, "/admin/submissions")).await
    };
    match run.await {
        Ok(answer) if args.json => {
            println!("{answer}");
            Outcome::Done
        }
        Ok(answer) => {
            let listed = answer["submissions"].as_array().cloned().unwrap_or_default();
            if listed.is_empty() {
                println!("no submissions");
            }
            for s in &listed {
                print!("{}", describe(s));
            }
            Outcome::Done
        }
        Err(e) => report(&e),
    }
}

/// One submission and a line per manifest it named.
fn describe(s: &Value) -> String {
    let text = |v: &Value| v.as_str().unwrap_or("?").to_string();
    let job = s["job_id"].as_str().unwrap_or("?");
    let mut out = format!(
        "{}  from {}  {:<12} {:>5}%  {} of {} files  job {job}\n",
        text(&s["submission_id"]),
        text(&s["submitter"]["value"]),
        text(&s["status"]),
        s["progress_percent"],
        s["files_finished"],
        s["files_total"],
    );
    for m in s["manifests"].as_array().into_iter().flatten() {
        let what = match (m["manifest_url"].as_str(), m["replaces"].as_str()) {
            (Some(url), None) => url.to_string(),
            (Some(url), Some(old)) => format!("{url} (replaces {old})"),
            (None, Some(old)) => format!("withdraws {old}"),
            (None, None) => "?".into(),
        };
        let mut line = format!(
            "  #{} {:<7} {}: {} files, {} imported, {} failed",
            m["seq"],
            text(&m["state"]),
            what,
            m["files"],
            m["imported"],
            m["failed"]
        );
        if let Some(why) = m["failure"].as_str() {
            line.push_str(&format!(" ({why})"));
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}
