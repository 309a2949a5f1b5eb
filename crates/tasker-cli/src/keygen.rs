//! `tasker keygen NAME`: a CURVE key pair for an orchestrator or a worker.

use std::path::PathBuf;

use anyhow::{ensure, Context, Result};
use clap::Args;
use tasker_transport::curve::KeyPair;

/// Options of `tasker keygen`.
#[derive(Args, Debug)]
pub struct KeygenArgs {
    /// The key's name: writes NAME.key (secret, mode 0600) and NAME.pub.
    pub name: String,
    /// The folder to write into.
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
}

pub fn run(args: KeygenArgs) -> Result<()> {
    // The name becomes a file name and, through the orchestrator's ZAP
    // handler, the worker's identity in its logs: keep it plain.
    ensure!(
        !args.name.is_empty()
            && args.name.len() <= 64
            && args
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && !args.name.starts_with('.'),
        "invalid key name {:?}: use up to 64 letters, digits, '-', '_' or '.', not starting with '.'",
        tasker_protocol::codec::truncate(&args.name, 80)
    );
    let pair = KeyPair::generate()?;
    let (secret, public) = pair
        .write(&args.out, &args.name)
        .with_context(|| format!("writing the key pair into {}", args.out.display()))?;
    println!(
        "wrote {} (secret: keep it on this machine, mode 0600)",
        secret.display()
    );
    println!("wrote {} (public key {})", public.display(), pair.public());
    Ok(())
}
