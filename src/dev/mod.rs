//! `moment-mandates dev`: the service, the Moment simulator and a demo merchant page in one
//! process, wired together with fresh secrets on the local Postgres. The tests start the same
//! thing on port 0.

mod billing;
mod demo;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{Config, DbConfig};
use crate::db;
use crate::moment::signature::WebhookSecret;
use crate::sim::{self, Faults, Sim, SimConfig};

/// What `dev` starts, and how.
#[derive(Debug, Clone)]
pub struct DevOptions {
    pub database_url: String,
    pub listen: SocketAddr,
    pub sim_listen: SocketAddr,
    pub demo_listen: SocketAddr,
    /// How long a charge stays `processing` at the simulator.
    pub settle_delay: Duration,
    /// How long an unfinished checkout stays open.
    pub session_expiry: Duration,
    pub webhook_retry_schedule: Vec<Duration>,
    pub faults: Faults,
    /// The service's settings that tests shorten.
    pub moment_timeout: Duration,
    pub moment_max_attempts: u32,
    pub worker_interval: Duration,
    /// How long a mandate or charge may stay quiet before the worker asks the simulator.
    pub reconcile_after: Duration,
    /// The service's pool: connections at most, and how long a request waits for one.
    pub db_max_connections: u32,
    pub db_acquire_timeout: Duration,
    /// The service holds charges to their terms before Moment does (tests switch it off to
    /// prove the simulator refuses the same charges).
    pub local_terms_check: bool,
    /// How subscriptions are billed (dunning schedule, what exhaustion leads to, …).
    pub billing: crate::config::Billing,
}

impl DevOptions {
    /// The defaults of `moment-mandates dev` on `database_url`.
    pub fn new(database_url: &str) -> Self {
        Self {
            database_url: database_url.into(),
            listen: ([127, 0, 0, 1], 8080).into(),
            sim_listen: ([127, 0, 0, 1], 8081).into(),
            demo_listen: ([127, 0, 0, 1], 8082).into(),
            settle_delay: Duration::from_secs(1),
            session_expiry: Duration::from_secs(30 * 60),
            webhook_retry_schedule: [1, 5, 30, 120, 600]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
            faults: Faults::default(),
            moment_timeout: Duration::from_secs(10),
            moment_max_attempts: 3,
            worker_interval: Duration::from_secs(2),
            reconcile_after: Duration::from_secs(30),
            db_max_connections: 20,
            db_acquire_timeout: Duration::from_secs(5),
            local_terms_check: true,
            billing: crate::config::Billing::default(),
        }
    }
}

/// The three running servers.
pub struct Dev {
    pub service_url: String,
    pub sim_url: String,
    pub demo_url: String,
    /// The service's API key (the demo page's server side holds it).
    pub api_key: String,
    pub moment_secret_key: String,
    pub webhook_secret: String,
    pub sim: Arc<Sim>,
    /// The test clock the service and the simulator share.
    pub clock: crate::clock::Clock,
    stop: watch::Sender<bool>,
    service: JoinHandle<anyhow::Result<()>>,
}

fn random_token(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..len)
        .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char)
        .collect()
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for the {what}"))
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Starts everything. The database is created and migrated first, so a Postgres that cannot
/// be reached fails here, not in a background task.
pub async fn start(opts: DevOptions) -> anyhow::Result<Dev> {
    let db_config = DbConfig {
        url: opts.database_url.clone().into(),
        max_connections: 10,
        acquire_timeout: Duration::from_secs(5),
    };
    db::connect(&db_config, true).await?.close().await;

    let service_listener = bind(opts.listen, "service").await?;
    let sim_listener = bind(opts.sim_listen, "simulator").await?;
    let demo_listener = bind(opts.demo_listen, "demo page").await?;
    let service_url = format!("http://{}", service_listener.local_addr()?);
    let demo_url = format!("http://{}", demo_listener.local_addr()?);

    let moment_secret_key = format!("sk_test_{}", random_token(24));
    let mut key = [0u8; 24];
    key.iter_mut().for_each(|b| *b = fastrand::u8(..));
    let webhook_secret = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    );
    let api_key = format!("dev_{}", random_token(32));
    let (stop, rx) = watch::channel(false);

    let mut sim_config = SimConfig::new(&moment_secret_key, WebhookSecret::parse(&webhook_secret)?);
    sim_config.webhook_url = Some(format!("{service_url}/webhooks/moment"));
    sim_config.settle_delay = opts.settle_delay;
    sim_config.session_expiry = opts.session_expiry;
    sim_config.webhook_retry_schedule = opts.webhook_retry_schedule.clone();
    sim_config.webhook_timeout = Duration::from_secs(10);
    sim_config.faults = opts.faults.clone();
    // One test clock for the service and the simulator: `POST /test-clock/advance` moves both.
    let clock = crate::clock::Clock::test();
    sim_config.clock = clock.clone();
    let sim = sim::spawn(sim_config, sim_listener, stopped(rx.clone()))?;

    let mut config = Config::local(
        &opts.database_url,
        &service_url,
        &sim.url,
        &moment_secret_key,
        vec![WebhookSecret::parse(&webhook_secret)?],
        &[&api_key],
    );
    config.db.max_connections = opts.db_max_connections;
    config.db.acquire_timeout = opts.db_acquire_timeout;
    // `start` migrated the database above.
    config.migrate = false;
    config.listen_addr = opts.listen;
    config.moment_timeout = opts.moment_timeout;
    config.moment_max_attempts = opts.moment_max_attempts;
    config.default_return_url = Some(format!("{demo_url}/return"));
    config.worker_interval = opts.worker_interval;
    config.reconcile_after = opts.reconcile_after;
    config.local_terms_check = opts.local_terms_check;
    config.clock = clock.clone();
    config.billing = opts.billing.clone();
    // The demo shop is the merchant: it gets every event, signed with its own secret.
    let merchant_secret = crate::workflow::outbound::new_secret();
    config.merchant_webhook = Some((format!("{demo_url}/webhooks"), merchant_secret.clone()));
    let service = tokio::spawn(crate::app::run(
        config,
        service_listener,
        stopped(rx.clone()),
    ));

    let demo_app = demo::router(demo::Demo::new(
        &service_url,
        &api_key,
        &demo_url,
        &merchant_secret,
    )?);
    let demo_stop = stopped(rx);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(demo_listener, demo_app)
            .with_graceful_shutdown(demo_stop)
            .await
        {
            tracing::error!(error = %e, "demo page stopped");
        }
    });

    Ok(Dev {
        service_url,
        sim_url: sim.url.clone(),
        demo_url,
        api_key,
        moment_secret_key,
        webhook_secret,
        sim: sim.sim,
        clock,
        stop,
        service,
    })
}

impl Dev {
    /// Stops the three servers (in-flight requests finish) and waits for the service.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.service.await?
    }

    /// Completes when the service stops by itself (an error).
    pub async fn service_stopped(&mut self) -> anyhow::Result<()> {
        (&mut self.service).await?
    }

    /// What to do next, printed by `moment-mandates dev`.
    pub fn instructions(&self) -> String {
        let Dev {
            service_url: svc,
            sim_url: sim,
            demo_url: demo,
            api_key: key,
            ..
        } = self;
        format!(
            r#"
moment-mandates dev is running (Ctrl-C stops it)

  service        {svc}
  Moment (sim)   {sim}
  demo shop      {demo}        <- open this in a browser, press Subscribe

  API key        {key}
  Test card      4242 4242 4242 4242, any future expiry (12/34), any CVC (123)

Or by hand:

1. Start a mandate (answers with the mandate and its checkout_url):
   curl -s {svc}/mandates -H 'Authorization: Bearer {key}' \
     -H 'Content-Type: application/json' -H 'Accept: application/json' \
     -H "Idempotency-Key: $(cat /proc/sys/kernel/random/uuid)" \
     -d '{{"amount": 5000, "currency": "ZAR", "customer": {{"name": "Thandi", "email": "thandi@example.com"}}}}'

2. Open its checkout_url in a browser and pay with the test card, or settle it without one:
   curl -s -X POST {sim}/_sim/sessions/<session_id>/complete -d '{{"card": "4242424242424242"}}' \
     -H 'Content-Type: application/json'

3. Charge it (the mandate must be active):
   curl -s {svc}/charges -H 'Authorization: Bearer {key}' \
     -H 'Content-Type: application/json' -H "Idempotency-Key: $(cat /proc/sys/kernel/random/uuid)" \
     -d '{{"mandate_id": "<mandate id>"}}'

4. Follow it:
   curl -s {svc}/charges/<charge id> -H 'Authorization: Bearer {key}'
   curl -s {sim}/_sim/webhooks      (every webhook the simulator sent, with its answers)

5. Bill it monthly, then fast-forward the test clock the service and the simulator share:
   curl -s {svc}/subscriptions -H 'Authorization: Bearer {key}' \
     -H 'Content-Type: application/json' -H "Idempotency-Key: $(cat /proc/sys/kernel/random/uuid)" \
     -d '{{"mandate_id": "<mandate id>", "amount": 5000, "interval": {{"unit": "month", "count": 1}}}}'
   curl -s {svc}/test-clock/advance -H 'Authorization: Bearer {key}' \
     -H 'Content-Type: application/json' -d '{{"days": 31}}'
"#
        )
    }
}
