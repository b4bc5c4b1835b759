//! Services on real sockets and as processes: `run()` on a port-0 listener, the release
//! binary under `serve` configured through its environment, and waiting for either.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::app::{API_KEY, WEBHOOK_SECRET, test_config};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_moment-mandates");

/// A service started by `serve`: its base URL, its stop signal and its task.
pub type Served = (
    String,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
);

/// Starts `run()` on a port-0 listener against the test database.
pub async fn serve(database_url: &str, moment_url: &str) -> Served {
    serve_with(database_url, moment_url, |_| {}).await
}

/// `serve` with settings changed by `tweak`.
pub async fn serve_with(
    database_url: &str,
    moment_url: &str,
    tweak: impl FnOnce(&mut moment_mandates::config::Config),
) -> Served {
    let mut config = test_config(database_url, moment_url);
    tweak(&mut config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(moment_mandates::app::run(config, listener, async move {
        let _ = stopped.await;
    }));
    (base, stop, handle)
}

/// Stops a service started by `serve` and asserts it exits cleanly within 10 s.
pub async fn shut_down(
    stop: tokio::sync::oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// Waits up to `secs` for `check`.
pub async fn within(secs: u64, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The real binary under `serve`, configured through its environment.
pub fn spawn_service(db_url: &str, port: u16, sim_url: &str) -> Child {
    Command::new(BIN)
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", db_url)
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("MOMENT_API_URL", sim_url)
        .env("MOMENT_SECRET_KEY", "sk_test_secret")
        .env("MOMENT_WEBHOOK_SECRETS", WEBHOOK_SECRET)
        .env("API_KEYS", API_KEY)
        .env("METRICS_LISTEN_ADDR", "127.0.0.1:0")
        .env("MOMENT_TIMEOUT_SECS", "1")
        .env("MOMENT_MAX_RETRY_AFTER_SECS", "2")
        .env("WORKER_INTERVAL_SECS", "0.5")
        .env("RECONCILE_AFTER_SECS", "3")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the binary starts")
}

pub async fn wait_ready(http: &reqwest::Client, base: &str) {
    within(30, "the service to be ready", async || {
        http.get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
