//! `tasker serve`: the orchestrator as a service, with durable tasks and
//! an HTTP API, until SIGTERM or Ctrl-C.

use std::io::Write;

use anyhow::Result;
use clap::Args;
use tokio::signal::unix::{signal, SignalKind};

use crate::ConfigArgs;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Where tasks are kept: sqlite:PATH or postgres://USER@HOST/DB
    /// (config key `store`).
    #[arg(long)]
    pub store: Option<String>,
    /// HTTP API address, HOST:PORT; port 0 picks a free one (config key
    /// `api_listen`).
    #[arg(long)]
    pub api_listen: Option<String>,
    /// Folder of workflow templates, *.yaml (config key `workflows_dir`).
    #[arg(long)]
    pub workflows_dir: Option<String>,
    /// Hours ended tasks are kept; 0 keeps them (config key
    /// `task_retention_hours`).
    #[arg(long)]
    pub task_retention_hours: Option<u64>,
    /// YAML file of `name: token` lines; every request but /healthz and
    /// the dashboard's static files must then carry one as a bearer token
    /// (config key `api_tokens_file`).
    #[arg(long)]
    pub api_tokens_file: Option<String>,
    /// Answer without tokens on an address other machines can reach (only
    /// on a network you trust; config key `api_trusted_network`).
    #[arg(long)]
    pub trusted_network: bool,
    /// Check the configuration, the API tokens file and every workflow
    /// file, say what is wrong (exit 1) or what would load (exit 0), and
    /// start nothing: before a restart, since a file that does not load
    /// stops `serve` at start.
    #[arg(long)]
    pub check: bool,
    #[command(flatten)]
    pub config: ConfigArgs,
}

pub fn run(args: ServeArgs) -> Result<()> {
    let mut config = args.config.load()?;
    if let Some(store) = args.store {
        config.store = store;
    }
    if let Some(listen) = args.api_listen {
        config.api_listen = listen;
    }
    if let Some(dir) = args.workflows_dir {
        config.workflows_dir = dir;
    }
    if let Some(hours) = args.task_retention_hours {
        config.task_retention_hours = hours;
    }
    if let Some(file) = args.api_tokens_file {
        config.api_tokens_file = file;
    }
    if args.trusted_network {
        config.api_trusted_network = true;
    }
    config.validate()?;
    if args.check {
        let names = tasker_server::Service::check(&config)?;
        let loaded = match names.len() {
            1 => "1 workflow loads".to_string(),
            n => format!("{n} workflows load"),
        };
        println!(
            "tasker serve --check: the configuration and tokens are valid and {loaded}: {}",
            names.join(", ")
        );
        return Ok(());
    }
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let server = tasker_server::Server::bind(&config).await?;
        let service = server.service();
        // One line on stdout, for people and for scripts that started us
        // with port 0 and need to know where to go.
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "tasker serve: api http://{} zeromq {} store {} workflows {}",
            server.local_addr(),
            service.endpoint(),
            redact(&config.store),
            service.workflows().len(),
        )?;
        out.flush()?;
        drop(out);
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        server
            .run(async move {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            })
            .await?;
        Ok(())
    })
}

/// The store URL without its password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &credentials[..colon],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_not_printed() {
        assert_eq!(
            super::redact("postgres://app:s3cret@db:5432/tasks"),
            "postgres://app:***@db:5432/tasks"
        );
        assert_eq!(
            super::redact("sqlite:tasker-data/tasker.db"),
            "sqlite:tasker-data/tasker.db"
        );
    }
}
