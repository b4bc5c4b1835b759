//! A merchant's webhook endpoint that takes deliveries and answers none of them until the
//! test releases it (or drops it): a slow endpoint whose slowness does not depend on the
//! machine's speed.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::post;
use tokio::sync::watch;

/// The endpoint, listening on a port of its own until dropped.
pub struct HeldEndpoint {
    /// Where it listens; deliveries go to `{url}/hook`.
    pub url: String,
    received: Arc<AtomicUsize>,
    open: watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
}

impl HeldEndpoint {
    /// Starts it on `127.0.0.1`, holding every delivery.
    pub async fn start() -> Self {
        let received = Arc::new(AtomicUsize::new(0));
        let (open, gate) = watch::channel(false);
        let counted = Arc::clone(&received);
        let app = Router::new().route(
            "/hook",
            post(move || {
                let counted = Arc::clone(&counted);
                let mut gate = gate.clone();
                async move {
                    counted.fetch_add(1, Ordering::SeqCst);
                    let _ = gate.wait_for(|open| *open).await;
                    StatusCode::NO_CONTENT
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            url,
            received,
            open,
            server,
        }
    }

    /// Deliveries that have arrived, answered or not.
    pub fn received(&self) -> usize {
        self.received.load(Ordering::SeqCst)
    }

    /// Answers the deliveries held and every one after them with 204 (as dropping it does
    /// for those held).
    pub fn release(&self) {
        self.open.send_replace(true);
    }
}

impl Drop for HeldEndpoint {
    fn drop(&mut self) {
        self.server.abort();
    }
}
