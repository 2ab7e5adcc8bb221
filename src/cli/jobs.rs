//! `jobs`, `status` and `delete`: import jobs on a running server. `status --follow` draws a live
//! progress bar until the job ends. A job's URL (or id) is its capability: status and delete
//! need no other credential.
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::{
    remote::{refusal, AdminArgs, Remote, RemoteError},
    report, Outcome,
};

/// Longest `--follow` waits, unless told otherwise.
const DEFAULT_FOLLOW_LIMIT_SECS: u64 = 24 * 3600;

#[derive(Debug, clap::Args)]
pub struct JobsArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// Print the server's answer as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The admin credential, when at hand, reaches Bulk Submit jobs too.
    #[command(flatten)]
    admin: AdminArgs,
    /// The job's status URL (as the ping's Content-Location gave it), or its id.
    job: String,
    /// Keep polling, with a progress bar, until the job ends.
    #[arg(long)]
    follow: bool,
    /// Seconds `--follow` waits at most.
    #[arg(long, default_value_t = DEFAULT_FOLLOW_LIMIT_SECS)]
    timeout: u64,
    /// Print the final status as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    /// The admin credential, when at hand, reaches Bulk Submit jobs too.
    #[command(flatten)]
    admin: AdminArgs,
    /// The job's status URL, or its id.
    job: String,
}

#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error("the job did not end within {0} s (--timeout); it goes on at the server")]
    TooLong(u64),
}

/// Whole job ids are this long (128 bits in hex).
const JOB_ID_CHARS: usize = 32;

/// The status URL of `job`: a URL, an id on `server`, or the start of one (as the audit trail
/// and logs show ids: their first 8 characters), looked up among the jobs with the admin
/// credential when one is at hand.
async fn status_url(remote: &Remote, job: &str) -> Result<String, RemoteError> {
    if job.starts_with("http://") || job.starts_with("https://") {
        return Ok(job.to_string());
    }
    let job = job.trim_end_matches('…');
    let hex = !job.is_empty() && job.chars().all(|c| c.is_ascii_hexdigit());
    if job.len() >= JOB_ID_CHARS || !hex || !remote.has_admin() {
        return Ok(remote.url(&format!("/job/{job}")));
    }
    let listed = remote.json(remote.request(Method::GET, "/admin/jobs")).await?;
    let matching: Vec<&str> = listed["jobs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|j| j["id"].as_str())
        .filter(|id| id.starts_with(&job.to_ascii_lowercase()))
        .collect();
    match matching[..] {
        [id] => Ok(remote.url(&format!("/job/{id}"))),
        [] => Err(RemoteError::NoSuchJob(format!("no job's id starts with '{job}'"))),
        _ => Err(RemoteError::NoSuchJob(format!(
            "{} jobs' ids start with '{job}'; give more of it",
            matching.len()
        ))),
    }
}

pub async fn list(args: JobsArgs) -> Outcome {
    let run = async {
        let remote = Remote::admin(&args.admin)?;
        remote.json(remote.request(Method::GET, "/admin/jobs")).await
    };
    match run.await {
        Ok(answer) if args.json => {
            println!("{answer}");
            Outcome::Done
        }
        Ok(answer) => {
            let jobs = answer["jobs"].as_array().cloned().unwrap_or_default();
            if jobs.is_empty() {
                println!("no import jobs");
            }
            for j in jobs {
                // Whole: the id is what `status`, `cancel` and `delete` take.
                let id = j["id"].as_str().unwrap_or("?");
                println!(
                    "{id}  {:<22} {:>5}%  {} files, {} resources  {}",
                    j["state"].as_str().unwrap_or("?"),
                    j["progress_percent"],
                    j["files_total"],
                    j["resources"],
                    j["provider_name"].as_str().or(j["provider_aud"].as_str()).unwrap_or("")
                );
            }
            Outcome::Done
        }
        Err(e) => report(&e),
    }
}

/// How a job ended, as `status` reports it: exit 0 completed, 3 completed with errors, 1 failed,
/// 4 still running.
pub enum Ended {
    Completed(Value),
    CompletedWithErrors(Value),
    Failed(String),
    Running { percent: f64, text: String },
}

impl Ended {
    pub fn outcome(&self) -> Outcome {
        match self {
            Ended::Completed(_) => Outcome::Done,
            Ended::Running { .. } => Outcome::Running,
            Ended::CompletedWithErrors(_) => Outcome::Partial,
            Ended::Failed(_) => Outcome::Failed,
        }
    }
}

/// One status request.
async fn check(remote: &Remote, url: &str) -> Result<Ended, RemoteError> {
    let res = remote.send(remote.to(Method::GET, url)).await?;
    let header = |name: &str| res.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    match res.status() {
        StatusCode::ACCEPTED => {
            let percent =
                header("x-progress").and_then(|p| p.trim_end_matches('%').trim().parse().ok()).unwrap_or(0.0);
            let text = header("x-status").unwrap_or_else(|| "in progress".into());
            Ok(Ended::Running { percent, text })
        }
        StatusCode::OK => {
            let body: Value = res.json().await?;
            let partial = body["extension"]["result"] == "completed-with-errors";
            Ok(if partial { Ended::CompletedWithErrors(body) } else { Ended::Completed(body) })
        }
        StatusCode::GONE => {
            let body = res.bytes().await.unwrap_or_default();
            let why = crate::fhir::operation_outcome::OperationOutcome::summarize(&body)
                .unwrap_or_else(|| "the import was cancelled".into());
            Ok(Ended::Failed(why))
        }
        StatusCode::INTERNAL_SERVER_ERROR => {
            let body = res.bytes().await.unwrap_or_default();
            let why = crate::fhir::operation_outcome::OperationOutcome::summarize(&body)
                .unwrap_or_else(|| "the import failed".into());
            Ok(Ended::Failed(why))
        }
        _ => Err(refusal(res).await),
    }
}

/// Poll until the job ends, drawing a progress bar on a terminal (and nothing in a pipe).
pub async fn follow(remote: &Remote, url: &str, limit: Duration) -> Result<Ended, FollowError> {
    let bar = indicatif::ProgressBar::new(100);
    bar.set_style(
        // The text on a line of its own: beside the bar, 80 columns left it 20 characters.
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos:>3}%\n  {wide_msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let deadline = Instant::now() + limit;
    // Bounded by `limit`.
    loop {
        match check(remote, url).await? {
            Ended::Running { percent, text } => {
                bar.set_position(percent.clamp(0.0, 100.0) as u64);
                bar.set_message(compact(&text));
                if Instant::now() >= deadline {
                    bar.abandon();
                    return Err(FollowError::TooLong(limit.as_secs()));
                }
                tokio::time::sleep(POLL_EVERY).await;
            }
            ended => {
                bar.finish_and_clear();
                return Ok(ended);
            }
        }
    }
}

/// The server's status text in fewer words, so that rate and time left fit a terminal line.
fn compact(text: &str) -> String {
    [
        ("importing: ", ""),
        (" files done", " files"),
        (" received so far", ""),
        (" MB and ", " MB, "),
        (" announced", ""),
    ]
    .iter()
    .fold(text.to_string(), |t, (long, short)| t.replace(long, short))
}

/// How often `--follow` asks.
const POLL_EVERY: Duration = Duration::from_millis(500);

/// Files named at most in a summary; the outcome file has them all.
const MAX_NAMED_FAILURES: usize = 10;

/// Print how a job ended, and for people, what its outcome file says: where the files landed and
/// which failed and why (the first few).
pub async fn print_summary(remote: &Remote, ended: &Ended, json: bool) {
    print_end(ended, json);
    let (Ended::Completed(body) | Ended::CompletedWithErrors(body)) = ended else { return };
    let Some(url) = body["outcome"][0]["url"].as_str().filter(|_| !json) else { return };
    let Ok(res) = remote.send(remote.to(Method::GET, url)).await else { return };
    let text = res.text().await.unwrap_or_default();
    let lines: Vec<Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let said = |oo: &Value, severity: &str| {
        oo["issue"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|i| i["severity"] == severity)
            .and_then(|i| i["diagnostics"].as_str())
            .map(str::to_string)
    };
    // "… stored as <job>/<name>": where they went.
    if let Some(stored) = lines
        .iter()
        .filter_map(|oo| said(oo, "information"))
        .find_map(|d| d.split(", stored as ").nth(1).map(str::to_string))
    {
        println!("stored as, for example: {stored}");
    }
    let failures: Vec<String> =
        lines.iter().filter_map(|oo| said(oo, "error").or_else(|| said(oo, "fatal"))).collect();
    for why in failures.iter().take(MAX_NAMED_FAILURES) {
        println!("failed: {why}");
    }
    if failures.len() > MAX_NAMED_FAILURES {
        println!("… and {} more failures in {url}", failures.len() - MAX_NAMED_FAILURES);
    }
}

/// Print how a job ended: a summary line, or the JSON.
pub fn print_end(ended: &Ended, json: bool) {
    match ended {
        Ended::Completed(body) | Ended::CompletedWithErrors(body) if json => println!("{body}"),
        Ended::Completed(body) | Ended::CompletedWithErrors(body) => {
            let ext = &body["extension"];
            println!(
                "{}: {} files ({} failed), {} resources; outcome per file: {}; files kept until {}",
                ext["result"].as_str().unwrap_or("completed"),
                ext["files"],
                ext["failedFiles"],
                ext["resources"],
                body["outcome"][0]["url"].as_str().unwrap_or("?"),
                ext["filesKeptUntil"].as_str().unwrap_or("?"),
            );
        }
        Ended::Failed(why) if json => {
            println!("{}", serde_json::json!({ "result": "failed", "reason": why }))
        }
        Ended::Failed(why) => println!("failed: {why}"),
        Ended::Running { percent, text } if json => {
            println!("{}", serde_json::json!({ "result": "in-progress", "percent": percent, "status": text }))
        }
        Ended::Running { percent, text } => println!("running: {percent}% ({text})"),
    }
}

pub async fn status(args: StatusArgs) -> Outcome {
    let remote = Remote::admin_if_known(&args.admin);
    let url = match status_url(&remote, &args.job).await {
        Ok(url) => url,
        Err(e) => return report(&e),
    };
    let ended = if args.follow {
        follow(&remote, &url, Duration::from_secs(args.timeout)).await
    } else {
        check(&remote, &url).await.map_err(FollowError::from)
    };
    match ended {
        Ok(ended) => {
            print_summary(&remote, &ended, args.json).await;
            ended.outcome()
        }
        Err(e) => report(&e),
    }
}

/// Send `req`; what the server's OperationOutcome said, or why it refused.
async fn said(remote: &Remote, req: reqwest::RequestBuilder) -> Result<Option<String>, RemoteError> {
    let res = remote.send(req).await?;
    if !res.status().is_success() {
        return Err(refusal(res).await);
    }
    let body = res.bytes().await?;
    Ok(crate::fhir::operation_outcome::OperationOutcome::summarize(&body))
}

pub async fn cancel(args: DeleteArgs) -> Outcome {
    let remote = Remote::admin_if_known(&args.admin);
    let url = match status_url(&remote, &args.job).await {
        Ok(url) => format!("{url}/cancel"),
        Err(e) => return report(&e),
    };
    match said(&remote, remote.to(Method::POST, &url)).await {
        // The server's own words: what was removed and what stays, per destination.
        Ok(text) => {
            println!("{}", text.unwrap_or_else(|| "cancelled".into()));
            Outcome::Done
        }
        Err(e) => report(&e),
    }
}

pub async fn delete(args: DeleteArgs) -> Outcome {
    let remote = Remote::admin_if_known(&args.admin);
    let url = match status_url(&remote, &args.job).await {
        Ok(url) => url,
        Err(e) => return report(&e),
    };
    match said(&remote, remote.to(Method::DELETE, &url)).await {
        Ok(text) => {
            println!("{}", text.unwrap_or_else(|| "deleted".into()));
            Outcome::Done
        }
        Err(e) => report(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follow_text_fits_an_80_column_line_with_rate_and_time_left() {
        let text = "importing: 0 of 6 files done; 12.3 MB and 4567 resources received so far (2.1 MB/s) of 30000 announced; about 3 min left";
        let short = compact(text);
        assert!(short.len() <= 78, "{} characters: {short}", short.len());
        assert!(short.contains("2.1 MB/s") && short.contains("about 3 min left"), "{short}");
    }
}
