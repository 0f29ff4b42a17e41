//! Serves the API router on its listener: plain HTTP through `axum::serve`, or HTTPS with a TLS
//! handshake per connection (each in its own task, under a timeout, so a slow client holds up
//! nobody) and hyper's HTTP/1 and HTTP/2.

use axum::Router;
use flotilla_common::tls::ReloadingTls;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `router` on `listener` until `cancel`; then lets requests in flight finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<ReloadingTls>>,
    cancel: CancellationToken,
) {
    let Some(tls) = tls else {
        let serve = axum::serve(listener, router)
            .with_graceful_shutdown(async move { cancel.cancelled().await });
        if let Err(e) = serve.await {
            warn!(error = %e, "API server failed");
        }
        return;
    };
    let graceful = GracefulShutdown::new();
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "API accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = cancel.cancelled() => break,
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
        let service = TowerToHyperService::new(router.clone());
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let stream =
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => return debug!(%peer, error = %e, "API TLS handshake failed"),
                    Err(_) => return debug!(%peer, "API TLS handshake timed out"),
                };
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                debug!(%peer, error = %e, "API connection ended with an error");
            }
        });
    }
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown())
        .await
        .is_err()
    {
        warn!("API connections still open after 10s; closing them");
    }
}
