//! One log line per request: method, route template (never the raw path or query: job ids are
//! capabilities and queries may carry secrets), status, latency, and the job's id prefix.
use std::{sync::Arc, time::Instant};

use axum::{
    extract::{MatchedPath, Request, State},
    middleware::Next,
    response::Response,
};

use crate::metrics::{Metrics, RouteLabels};

/// Log the request and count it in `/metrics`.
pub async fn log(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string());
    let job = job_of(req.uri().path()).map(crate::telemetry::shown_id);
    let res = next.run(req).await;
    let seconds = started.elapsed().as_secs_f64();
    let labels = RouteLabels {
        method: method.to_string(),
        // `/job/:id`: some label parsers stop at a brace inside a value.
        route: route.as_deref().map_or_else(|| "ui".into(), |r| r.replace('{', ":").replace('}', "")),
        status: res.status().as_u16().to_string(),
    };
    metrics.http_requests.get_or_create(&labels).inc();
    metrics.http_request_seconds.get_or_create(&labels).observe(seconds);
    tracing::info!(
        %method,
        route = route.as_deref().unwrap_or("(ui file)"),
        status = res.status().as_u16(),
        latency_ms = (seconds * 1000.0 * 10.0).round() / 10.0,
        job = job.as_deref().unwrap_or("-"),
        "request"
    );
    res
}

/// The job id in a job path (`/job/{id}…`, `/admin/jobs/{id}`).
fn job_of(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/job/").or_else(|| path.strip_prefix("/admin/jobs/"))?;
    let id = rest.split('/').next()?;
    (!id.is_empty()).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_job_is_found_in_job_paths_only() {
        assert_eq!(job_of("/job/abc123/import-outcome.ndjson"), Some("abc123"));
        assert_eq!(job_of("/admin/jobs/abc123"), Some("abc123"));
        assert_eq!(job_of("/admin/jobs"), None);
        assert_eq!(job_of("/jwks"), None);
    }
}
