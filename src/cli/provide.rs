//! `bulk-import provide DIR`: serve a directory of NDJSON files as a static Bulk Data export, so
//! someone without an EHR at hand can import their own test data. A test provider, not a real
//! one: no auth (it publishes no SMART configuration, so we fetch without a token), loopback by
//! default, and files are served as they are on disk.
use std::{
    io::BufRead,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use axum::{
    extract::{Path as UrlPath, Request},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde_json::{json, Value};
use tower::ServiceExt;

use super::{report, Outcome};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The directory holding the `.ndjson` files (one resource type per file is usual; a file
    /// mixing types is listed without a type).
    dir: PathBuf,
    /// Address to listen on; port 0 picks a free one. Keep it on loopback unless the server
    /// importing runs elsewhere.
    #[arg(long, default_value = "127.0.0.1:8765")]
    listen: SocketAddr,
}

#[derive(Debug, thiserror::Error)]
enum ProvideError {
    #[error("cannot read {}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{} holds no .ndjson files", .0.display())]
    Empty(PathBuf),
    #[error("cannot listen on {addr}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("serving stopped")]
    Serve(#[source] std::io::Error),
}

/// One file of the export: its name, resource type (of its first line) and line count.
#[derive(Debug, PartialEq)]
struct Listed {
    name: String,
    resource_type: Option<String>,
    count: u64,
}

pub async fn run(args: Args) -> Outcome {
    match serve(&args).await {
        Ok(()) => Outcome::Done,
        Err(e) => report(&e),
    }
}

async fn serve(args: &Args) -> Result<(), ProvideError> {
    let files = list(&args.dir)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| ProvideError::Listen { addr: args.listen, source })?;
    let addr = listener.local_addr().map_err(|source| ProvideError::Listen { addr: args.listen, source })?;
    let base = format!("http://{addr}");
    let manifest = manifest(&base, &files);
    let resources: u64 = files.iter().map(|f| f.count).sum();
    // The first line is for scripts: the URL to ping with.
    println!("{base}/manifest.json");
    eprintln!(
        "serving {} files ({resources} resources) from {} as a static export; Ctrl-C stops\n\
         register the provider with --aud {base}, then ping with --export-type static --export-url {base}/manifest.json",
        files.len(),
        args.dir.display(),
    );
    // Only the files listed: nothing else under DIR (dotfiles, subdirectories) is reachable.
    let listed: std::sync::Arc<std::collections::HashMap<String, PathBuf>> =
        std::sync::Arc::new(files.iter().map(|f| (f.name.clone(), args.dir.join(&f.name))).collect());
    let app = Router::new().route("/manifest.json", get(move || async move { Json(manifest) })).route(
        "/files/{name}",
        get(move |name: UrlPath<String>, req: Request| serve_file(listed.clone(), name.0, req)),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(ProvideError::Serve)
}

/// One listed file, streamed from disk (with ranges and conditional requests, as a file host does).
async fn serve_file(
    listed: std::sync::Arc<std::collections::HashMap<String, PathBuf>>,
    name: String,
    req: Request,
) -> Response {
    let Some(path) = listed.get(&name) else {
        return (StatusCode::NOT_FOUND, "not a file of this export").into_response();
    };
    match tower_http::services::ServeFile::new(path).oneshot(req).await {
        Ok(res) => res.into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// The `.ndjson` files of `dir`, by name, each read once to count its lines.
fn list(dir: &Path) -> Result<Vec<Listed>, ProvideError> {
    let read = |path: &Path, source| ProvideError::Read { path: path.to_path_buf(), source };
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| read(dir, e))?
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with(".ndjson") && !n.starts_with('.'))
        .collect();
    names.sort();
    if names.is_empty() {
        return Err(ProvideError::Empty(dir.to_path_buf()));
    }
    names
        .into_iter()
        .map(|name| {
            let path = dir.join(&name);
            let file = std::fs::File::open(&path).map_err(|e| read(&path, e))?;
            let (mut count, mut resource_type, mut mixed) = (0u64, None::<String>, false);
            for line in std::io::BufReader::new(file).lines() {
                let line = line.map_err(|e| read(&path, e))?;
                if line.trim().is_empty() {
                    continue;
                }
                count += 1;
                let ty = serde_json::from_str::<Value>(&line)
                    .ok()
                    .and_then(|v| v.get("resourceType")?.as_str().map(str::to_string));
                match (&resource_type, ty) {
                    (None, Some(t)) if count == 1 => resource_type = Some(t),
                    (Some(first), Some(t)) if *first == t => {}
                    _ => mixed = true,
                }
            }
            Ok(Listed { name, resource_type: resource_type.filter(|_| !mixed), count })
        })
        .collect()
}

/// `base/files/<name>`, the name percent-encoded as one path segment (`#`, `?`, `%` and spaces
/// are allowed in file names).
fn file_url(base: &str, name: &str) -> String {
    match url::Url::parse(base) {
        Ok(mut url) => {
            if let Ok(mut segments) = url.path_segments_mut() {
                segments.pop_if_empty().push("files").push(name);
            }
            url.to_string()
        }
        Err(_) => format!("{base}/files/{name}"),
    }
}

fn manifest(base: &str, files: &[Listed]) -> Value {
    let output: Vec<Value> = files
        .iter()
        .map(|f| {
            let mut entry = json!({ "url": file_url(base, &f.name), "count": f.count });
            if let Some(t) = &f.resource_type {
                entry["type"] = json!(t);
            }
            entry
        })
        .collect();
    json!({
        "transactionTime": crate::time_util::instant(crate::time_util::now_unix()),
        "request": format!("{base}/manifest.json"),
        "requiresAccessToken": false,
        "output": output,
        "error": [],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_listed_with_their_type_and_count_and_mixed_ones_untyped() {
        let dir = tempfile::TempDir::new().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        write("b.ndjson", "{\"resourceType\":\"Patient\"}\n{\"resourceType\":\"Patient\"}\n\n");
        write("a.ndjson", "{\"resourceType\":\"Patient\"}\n{\"resourceType\":\"Observation\"}");
        write("notes.txt", "not listed");
        let listed = list(dir.path()).unwrap();
        assert_eq!(
            listed,
            vec![
                Listed { name: "a.ndjson".into(), resource_type: None, count: 2 },
                Listed { name: "b.ndjson".into(), resource_type: Some("Patient".into()), count: 2 },
            ]
        );
        let m = manifest("http://127.0.0.1:1", &listed);
        assert_eq!(
            m["output"][1],
            json!({"type": "Patient", "url": "http://127.0.0.1:1/files/b.ndjson", "count": 2})
        );
        assert!(m["output"][0].get("type").is_none());
        assert_eq!(
            file_url("http://127.0.0.1:1", "a b#?%.ndjson"),
            "http://127.0.0.1:1/files/a%20b%23%3F%25.ndjson"
        );
        let empty = tempfile::TempDir::new().unwrap();
        assert!(matches!(list(empty.path()), Err(ProvideError::Empty(_))));
    }
}
