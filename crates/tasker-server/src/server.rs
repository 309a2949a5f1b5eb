//! The process around the service: the HTTP listener, and a clean stop on
//! a signal.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tasker_config::TaskerConfig;

use crate::{Service, StartError};

/// A started service with its API listener bound, not serving yet.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let config = tasker_config::TaskerConfig::default();
/// let server = tasker_server::Server::bind(&config).await?;
/// println!("API on http://{}", server.local_addr());
/// server.run(async { let _ = tokio::signal::ctrl_c().await; }).await?;
/// # Ok(()) }
/// ```
pub struct Server {
    service: Arc<Service>,
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
}

impl Server {
    /// Starts the service ([`Service::start`]) and binds `api_listen`.
    ///
    /// An address other machines can reach (anything but loopback) needs
    /// `api_tokens_file`, or `api_trusted_network` said out loud.
    pub async fn bind(config: &TaskerConfig) -> Result<Server, StartError> {
        let listen = config.api_listen.clone();
        let loopback = listen
            .parse::<SocketAddr>()
            .is_ok_and(|addr| addr.ip().is_loopback());
        if !loopback && config.api_tokens_file.is_empty() && !config.api_trusted_network {
            return Err(StartError::Unprotected { address: listen });
        }
        // Bind first: a taken port should fail before tasks are resumed.
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .map_err(|source| StartError::Bind {
                address: listen.clone(),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            address: listen,
            source,
        })?;
        let service = Service::start(config).await?;
        Ok(Server {
            service,
            listener,
            addr,
        })
    }

    /// The address the API answers on (the real port of `:0`).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The service.
    pub fn service(&self) -> &Arc<Service> {
        &self.service
    }

    /// Serves the API until `stop` completes, then stops the service
    /// ([`Service::shutdown`]: drain, then close the store) while the API
    /// still answers reads, and only then closes the listener. Requests
    /// still in progress then have five seconds before their connections
    /// are dropped, and a client that sends half a request, or leaves a
    /// connection idle, is cut off after 30 seconds: neither can keep the
    /// server from stopping.
    ///
    /// It also stops, and returns an error saying so, once it can write
    /// its store no more: another server took it over, or its writer
    /// failed ([`Service::taken_over`]). A stop whose store stayed down
    /// past the deadline, so that results workers had sent went unrecorded
    /// ([`Service::unrecorded`]), is an error too.
    pub async fn run(self, stop: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<()>();
        let app = crate::api::router(Arc::clone(&self.service));
        let http = tokio::spawn(crate::http::serve(
            self.listener,
            app,
            crate::http::Limits::serve(),
            async move {
                let _ = closed_rx.await;
            },
        ));
        let lost = tokio::select! {
            _ = stop => {
                tracing::info!("stop requested");
                None
            }
            why = self.service.taken_over() => {
                tracing::error!(reason = %why, "this server can write its store no more; stopping");
                Some(why)
            }
        };
        self.service.shutdown().await;
        let _ = closed_tx.send(());
        http.await.map_err(std::io::Error::other)?;
        let unrecorded = self.service.unrecorded();
        match lost {
            Some(why) => Err(std::io::Error::other(format!(
                "stopped: this server can write its store no more: {why}"
            ))),
            // Said as a failure: a supervisor, and whoever reads why steps
            // ran again, should know.
            None if unrecorded > 0 => Err(std::io::Error::other(format!(
                "stopped, but the store did not take what {unrecorded} task(s) last held \
                 (results workers had sent) before shutdown_timeout_ms passed; those steps \
                 count as lost at the next start"
            ))),
            None => Ok(()),
        }
    }
}
