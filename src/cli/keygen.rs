//! `bulk-import keygen`: a fresh key pair as files (private ones 0600), never over existing ones.
use std::path::PathBuf;

use serde_json::json;

use super::{report, Outcome};
use crate::key_pairs::{self, KeyPairError};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Signing algorithm: RS256, RS384, RS512, ES256, ES384 or ES512.
    #[arg(long, default_value = "ES384")]
    alg: String,
    /// Directory to write into (created if missing).
    #[arg(long, default_value = ".")]
    out: PathBuf,
    /// File name stem: writes STEM.private.jwk.json, STEM.private.pem, STEM.jwks.json, STEM.public.pem.
    #[arg(long, default_value = "key")]
    name: String,
    /// Replace files of the same names.
    #[arg(long)]
    force: bool,
    /// Print the result as JSON (the public JWKS and the paths written).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, thiserror::Error)]
enum KeygenError {
    #[error("{} exists already (use --force to replace it)", .0.display())]
    Exists(PathBuf),
    #[error("--name must be a plain file name (letters, digits, '-', '_', '.'), not '{0}'")]
    BadName(String),
    #[error(transparent)]
    KeyPair(#[from] KeyPairError),
}

pub fn run(args: Args) -> Outcome {
    match keygen(&args) {
        Ok(out) => {
            println!("{out}");
            Outcome::Done
        }
        Err(e) => report(&e),
    }
}

fn keygen(args: &Args) -> Result<String, KeygenError> {
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if args.name.is_empty() || args.name.starts_with('.') || !args.name.chars().all(plain) {
        return Err(KeygenError::BadName(args.name.clone()));
    }
    if !args.force {
        let taken =
            key_pairs::file_names(&args.name).into_iter().map(|n| args.out.join(n)).find(|p| p.exists());
        if let Some(path) = taken {
            return Err(KeygenError::Exists(path));
        }
    }
    let pair = key_pairs::generate(Some(&args.alg))?;
    let written = pair.write_files(&args.out, &args.name)?;
    if args.json {
        let files: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
        let kid = pair.public_jwk.get("kid").cloned().unwrap_or_default();
        return Ok(json!({ "alg": pair.alg, "kid": kid, "files": files, "jwks": pair.jwks() }).to_string());
    }
    let mut out = format!("made an {} key pair:", pair.alg);
    for path in &written {
        let secret = path.to_string_lossy().contains(".private.");
        let note = if secret { " (private: keep it secret)" } else { " (public)" };
        out.push_str(&format!("\n  {}{note}", path.display()));
    }
    out.push_str(
        "\npublish the .jwks.json (or register it as the provider's jwks) and sign with the private key",
    );
    Ok(out)
}
