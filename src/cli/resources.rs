//! `resources`: what a running server's resource store holds, per provider and type (admin
//! credential).
use reqwest::Method;

use super::{
    remote::{AdminArgs, Remote},
    report, Outcome,
};

#[derive(Debug, clap::Args)]
pub struct ResourcesArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// Print the server's answer as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn list(args: ResourcesArgs) -> Outcome {
    let run = async {
        let remote = Remote::admin(&args.admin)?;
        remote.json(remote.request(Method::GET, "/admin/resources")).await
    };
    match run.await {
        Ok(answer) if args.json => {
            println!("{answer}");
            Outcome::Done
        }
        Ok(answer) => {
            println!("{}", answer["store"].as_str().unwrap_or("resource store"));
            let counts = answer["resources"].as_array().cloned().unwrap_or_default();
            if counts.is_empty() {
                println!("  no resources stored yet");
            }
            for c in &counts {
                let text = |k: &str| c[k].as_str().unwrap_or("?").to_string();
                println!("  {}  {:<24} {:>10}", text("provider"), text("resourceType"), c["count"]);
            }
            Outcome::Done
        }
        Err(e) => report(&e),
    }
}
