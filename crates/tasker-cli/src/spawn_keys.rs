//! CURVE keys for the worker processes a command starts itself (`run
//! --spawn`, `bench-workers`): when the orchestrator requires CURVE, they
//! get a key pair made for this run, admitted beside the configured keys,
//! so a local run needs no key set-up of its own.

use std::path::Path;

use anyhow::{Context, Result};
use tasker_config::TaskerConfig;
use tasker_transport::curve::{KeyPair, ServerCurve};

/// The run's key files (removed when dropped) and the variables that give
/// them to a child.
pub struct SpawnKeys {
    _dir: tempfile::TempDir,
    pub env: Vec<(&'static str, String)>,
}

/// With CURVE on in `config`: makes a key pair for spawned workers, and
/// points `config` at a copy of the authorized keys folder that also
/// admits it. `None` (and `config` untouched) without CURVE.
pub fn prepare(config: &mut TaskerConfig) -> Result<Option<SpawnKeys>> {
    let Some(server) = ServerCurve::from_config(config)? else {
        return Ok(None);
    };
    let dir = tempfile::Builder::new()
        .prefix("tasker-keys-")
        .tempdir()
        .context("creating a folder for the spawned workers' keys")?;
    let authorized = dir.path().join("authorized");
    std::fs::create_dir(&authorized)?;
    copy_public_keys(&server.authorized_keys_dir, &authorized)?;
    let pair = KeyPair::generate()?;
    pair.write(dir.path(), "spawned")?;
    pair.public()
        .write(&authorized.join("spawned.pub"), "spawned")?;
    let server_key = dir.path().join("orchestrator.pub");
    server.keys.public().write(&server_key, "orchestrator")?;
    config.curve_authorized_keys_dir = authorized.to_string_lossy().into_owned();
    let path = |p: &Path| p.to_string_lossy().into_owned();
    let env = vec![
        (
            "TASKER_CURVE_SECRET_KEY_FILE",
            path(&dir.path().join("spawned.key")),
        ),
        ("TASKER_CURVE_SERVER_PUBLIC_KEY_FILE", path(&server_key)),
        // A child reading the same config file must not take it for an
        // orchestrator's.
        ("TASKER_CURVE_AUTHORIZED_KEYS_DIR", String::new()),
    ];
    Ok(Some(SpawnKeys { _dir: dir, env }))
}

fn copy_public_keys(from: &Path, to: &Path) -> Result<()> {
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) == Some("pub") {
            if let Some(name) = path.file_name() {
                std::fs::copy(&path, to.join(name))
                    .with_context(|| format!("copying {}", path.display()))?;
            }
        }
    }
    Ok(())
}
