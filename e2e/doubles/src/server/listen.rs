//! The accept loop: TLS on every connection, HTTP/1.1 or HTTP/2, and the per-connection control
//! a reset fault uses to drop the TCP connection.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::{Notify, oneshot};
use tower::ServiceExt as _;

/// Per-connection control handed to handlers: lets a fault drop the TCP connection.
#[derive(Clone)]
pub(super) struct ConnControl(pub(super) Arc<Notify>);

pub(super) async fn accept_loop(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    router: Router,
    mut shutdown: oneshot::Receiver<()>,
) {
    // Connections live in the set so that stopping the double also ends them.
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let Ok((tcp, _peer)) = accepted else { continue };
        let acceptor = acceptor.clone();
        let router = router.clone();
        conns.spawn(async move {
            // Keep a duplicate of the socket: a reset fault sets SO_LINGER 0 on it and closes
            // it, so the client sees a connection reset rather than an orderly close.
            let Ok(std_tcp) = tcp.into_std() else { return };
            let Ok(dup) = std_tcp.try_clone() else { return };
            let Ok(tcp) = tokio::net::TcpStream::from_std(std_tcp) else {
                return;
            };
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let kill = Arc::new(Notify::new());
            let ctl = ConnControl(kill.clone());
            let svc = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ctl.clone());
                    let router = router.clone();
                    async move { router.oneshot(req.map(Body::new)).await }
                },
            );
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(tls), svc);
            tokio::select! {
                _ = conn => {}
                _ = kill.notified() => {
                    let _ = socket2::SockRef::from(&dup).set_linger(Some(Duration::ZERO));
                }
            }
            drop(dup);
        });
    }
}
