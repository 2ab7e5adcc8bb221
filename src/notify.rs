//! Job notices (`NOTIFY_URL`): when a job ends, a JSON notice (the job, its provider, its result,
//! counts per resource type and where its outcome is) is POSTed to the operator's receiver,
//! signed so the receiver can tell it came from here and is fresh:
//! `X-Bulk-Import-Signature: sha256=<hex HMAC-SHA256(NOTIFY_SECRET, "<timestamp>.<body>")>` with
//! `X-Bulk-Import-Timestamp: <unix seconds>`. Delivery runs on its own task (the job never waits
//! for it), is retried with backoff, and what became of it is kept as the job's last outcome line.
use std::{collections::BTreeMap, time::Duration};

use openssl::{hash::MessageDigest, pkey::PKey, sign::Signer};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use url::Url;

use crate::{
    domain::{FileState, Job},
    fhir::manifest::FileKind,
    store::{job_store::JobStore, StoreError},
    time_util::{instant, now_unix},
};

/// Attempts per notice (the wait before the second is `NOTIFY_FIRST_RETRY`, doubling after).
pub const MAX_ATTEMPTS: u32 = 5;
/// Longest one attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

pub const SIGNATURE_HEADER: &str = "x-bulk-import-signature";
/// How a delivered notice's record begins (the outcome line is information, not a warning).
pub const DELIVERED: &str = "job notice delivered";
pub const TIMESTAMP_HEADER: &str = "x-bulk-import-timestamp";

/// Where notices go and what signs them.
pub struct Notifier {
    url: Url,
    secret: SecretString,
    http: reqwest::Client,
    /// Absolute URLs in notices, when the server knows its public address (`PUBLIC_URL`).
    public_url: Option<Url>,
    first_retry: Duration,
}

/// `sha256=<hex>` of `"<timestamp>.<body>"` under `secret`.
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> Result<String, openssl::error::ErrorStack> {
    Ok(format!("sha256={}", hmac_hex(secret, &[timestamp.to_string().as_bytes(), b".", body])?))
}

/// HMAC-SHA256 of the concatenated `parts`, in lower-case hex.
fn hmac_hex(secret: &str, parts: &[&[u8]]) -> Result<String, openssl::error::ErrorStack> {
    let key = PKey::hmac(secret.as_bytes())?;
    let mut signer = Signer::new(MessageDigest::sha256(), &key)?;
    for part in parts {
        signer.update(part)?;
    }
    Ok(signer.sign_to_vec()?.iter().map(|b| format!("{b:02x}")).collect())
}

impl Notifier {
    pub fn new(
        url: Url,
        secret: SecretString,
        http: reqwest::Client,
        public_url: Option<Url>,
        first_retry: Duration,
    ) -> Self {
        Self { url, secret, http, public_url, first_retry }
    }

    /// Where the receiver is, for `/info` and logs (without its query, which may be a secret).
    pub fn describe(&self) -> String {
        crate::auth::provider_base::redact(&self.url)
    }

    /// The notice of a job that ended.
    pub async fn notice(&self, store: &dyn JobStore, job: &Job) -> Result<Value, StoreError> {
        let files = store.files(&job.id).await?;
        let totals = store.file_totals(&job.id).await?;
        let mut types = BTreeMap::<String, i64>::new();
        for f in files.iter().filter(|f| f.state == FileState::Done && f.kind == FileKind::Output) {
            match f.type_counts.as_deref().and_then(|t| serde_json::from_str::<BTreeMap<String, i64>>(t).ok())
            {
                Some(counts) => counts.into_iter().for_each(|(t, n)| *types.entry(t).or_default() += n),
                None => *types.entry(f.resource_type.clone()).or_default() += f.resources,
            }
        }
        let result = match (job.state.as_str(), totals.has_errors()) {
            ("completed", true) => "completed-with-errors",
            (state, _) => state,
        };
        let at = |path: String| match &self.public_url {
            Some(base) => base.join(path.trim_start_matches('/')).map(|u| u.to_string()).unwrap_or(path),
            None => path,
        };
        Ok(json!({
            "event": "job.ended",
            "job_id": job.id,
            "client_id": job.client_id,
            "export_type": job.export_type.as_str(),
            "export_url": job.export_url,
            "result": result,
            "failure": job.failure,
            "files": totals.files,
            "failed_files": totals.failed,
            "resources": totals.resources,
            "resources_by_type": types,
            "status_url": at(format!("/job/{}", job.id)),
            "outcome_url": at(format!("/job/{}/import-outcome.ndjson", job.id)),
            "ended_at": instant(job.completed_at.unwrap_or_else(now_unix)),
        }))
    }

    /// Deliver `notice` (retrying with backoff, bounded in attempts and time); what became of it.
    pub async fn deliver(&self, notice: &Value, stop: &tokio_util::sync::CancellationToken) -> Delivery {
        let body = notice.to_string();
        let mut wait = self.first_retry;
        let mut last = String::new();
        for attempt in 1..=MAX_ATTEMPTS {
            let timestamp = now_unix();
            let sent = match signature(self.secret.expose_secret(), timestamp, body.as_bytes()) {
                Ok(signature) => self
                    .http
                    .post(self.url.clone())
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .header(SIGNATURE_HEADER, signature)
                    .header(TIMESTAMP_HEADER, timestamp.to_string())
                    .timeout(ATTEMPT_TIMEOUT)
                    .body(body.clone())
                    .send()
                    .await
                    .map_err(|e| crate::error_text::chain(&e.without_url())),
                Err(e) => {
                    return Delivery::Failed {
                        attempts: attempt,
                        why: format!("the notice could not be signed: {e}"),
                    }
                }
            };
            match sent {
                Ok(res) if res.status().is_success() => {
                    return Delivery::Delivered { attempts: attempt, status: res.status().as_u16() }
                }
                Ok(res) => last = format!("the receiver answered {}", res.status()),
                Err(why) => last = why,
            }
            if attempt == MAX_ATTEMPTS || stop.run_until_cancelled(tokio::time::sleep(wait)).await.is_none() {
                return Delivery::Failed { attempts: attempt, why: last };
            }
            wait *= 2;
        }
        Delivery::Failed { attempts: MAX_ATTEMPTS, why: last }
    }
}

/// What became of a notice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Delivered { attempts: u32, status: u16 },
    Failed { attempts: u32, why: String },
}

impl Delivery {
    pub fn text(&self, receiver: &str) -> String {
        match self {
            Delivery::Delivered { attempts, status } => {
                format!("{DELIVERED} to {receiver} (attempt {attempts}, answer {status})")
            }
            Delivery::Failed { attempts, why } => {
                format!("job notice not delivered to {receiver} after {attempts} attempt(s): {why}")
            }
        }
    }
}

/// Make job `id`'s notice, deliver it, and keep what became of it (logged too).
pub async fn deliver_and_keep(
    notifier: &Notifier,
    store: &dyn JobStore,
    id: &str,
    stop: &tokio_util::sync::CancellationToken,
) {
    let job = match store.job(id).await {
        Ok(Some(job)) => job,
        Ok(None) => return,
        Err(e) => {
            return tracing::warn!(error = %crate::error_text::chain(&e), "the job notice could not be made")
        }
    };
    let notice = match notifier.notice(store, &job).await {
        Ok(n) => n,
        Err(e) => {
            return tracing::warn!(error = %crate::error_text::chain(&e), "the job notice could not be made")
        }
    };
    let delivery = notifier.deliver(&notice, stop).await;
    let text = delivery.text(&notifier.describe());
    match &delivery {
        Delivery::Delivered { .. } => tracing::info!("{text}"),
        Delivery::Failed { .. } => tracing::warn!("{text}"),
    }
    if let Err(e) = store.set_notice(id, &text).await {
        tracing::warn!(error = %crate::error_text::chain(&e), "what became of the job notice could not be kept");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_the_timestamp_and_body() {
        // RFC 4231 test case 2.
        let known = hmac_hex("Jefe", &[b"what do ya ", b"want for nothing?"]).unwrap();
        assert_eq!(known, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        let sig = signature("Jefe", 0, b"what do ya want for nothing?").unwrap();
        assert_eq!(
            sig,
            format!("sha256={}", hmac_hex("Jefe", &[b"0.what do ya want for nothing?"]).unwrap())
        );
        assert_ne!(
            sig,
            signature("Jefe", 1, b"what do ya want for nothing?").unwrap(),
            "the timestamp counts"
        );
        assert_ne!(sig, signature("Jeff", 0, b"what do ya want for nothing?").unwrap(), "the key counts");
    }
}
