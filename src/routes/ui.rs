//! The browser UI (`static/`), built into the binary so the server serves it from any working
//! directory. `UI_DIR` serves a directory instead, for working on the UI without rebuilding.
use axum::{
    extract::State,
    http::{header, HeaderValue, StatusCode, Uri},
    response::{IntoResponse, Response},
};

use crate::state::AppState;

#[derive(rust_embed::Embed)]
#[folder = "static/"]
struct Assets;

/// `GET` of anything no route claims: a UI file, or a 404 that says so.
pub async fn serve(State(app): State<AppState>, uri: Uri) -> Response {
    let mut path = uri.path().trim_start_matches('/').to_string();
    if path.is_empty() || path.ends_with('/') {
        path.push_str("index.html");
    }
    let body = match &app.config.ui_dir {
        Some(dir) => from_dir(dir, &path).await,
        None => Assets::get(&path).map(|f| f.data.into_owned()),
    };
    let Some(body) = body else {
        return (StatusCode::NOT_FOUND, "not found: no API route or UI file has this path").into_response();
    };
    let mime = mime_guess::from_path(&path).first_or_octet_stream();
    let mut res = body.into_response();
    let headers = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(mime.essence_str()) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    // The UI is small; always asking again keeps it in step with the server after an upgrade.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}

/// A file under `dir`, only if `path` stays inside it.
async fn from_dir(dir: &std::path::Path, path: &str) -> Option<Vec<u8>> {
    let safe = path.split('/').all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\\'));
    if !safe {
        return None;
    }
    tokio::fs::read(dir.join(path)).await.ok()
}
