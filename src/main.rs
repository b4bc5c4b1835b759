//! The `moment-mandates` command: `serve`, `migrate`, `sim` and `dev`.

use std::process::ExitCode;

use clap::Parser;
use moment_mandates::config::{Cli, Command, LogFormat};
use moment_mandates::{app, db, dev, sim, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    // A .env file is optional; real environment variables win over it.
    let _ = dotenvy::dotenv();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let config = match args.config() {
                Ok(c) => c,
                Err(e) => return fail(&e),
            };
            let _logs = telemetry::init(config.log_format);
            let listener = match tokio::net::TcpListener::bind(config.listen_addr).await {
                Ok(l) => l,
                Err(e) => {
                    return fail(&format!(
                        "LISTEN_ADDR: cannot listen on {}: {e}",
                        config.listen_addr
                    ));
                }
            };
            report(app::run(config, listener, app::shutdown_signal()).await)
        }
        Command::Migrate(args) => {
            let config = match args.config() {
                Ok(c) => c,
                Err(e) => return fail(&e),
            };
            let _logs = telemetry::init(LogFormat::Text);
            report(db::connect(&config, true).await.map(|_| ()))
        }
        Command::Sim(args) => {
            let (listen, format, config) = match args.config() {
                Ok(c) => c,
                Err(e) => return fail(&e),
            };
            let _logs = telemetry::init(format);
            report(run_sim(listen, config).await)
        }
        Command::Dev(args) => {
            let (format, options) = match args.config() {
                Ok(c) => c,
                Err(e) => return fail(&e),
            };
            let _logs = telemetry::init(format);
            report(run_dev(options).await)
        }
    }
}

async fn run_sim(listen: std::net::SocketAddr, config: sim::SimConfig) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("SIM_LISTEN_ADDR: cannot listen on {listen}: {e}"))?;
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let handle = sim::spawn(config, listener, async move {
        let _ = stopped.wait_for(|s| *s).await;
    })?;
    tracing::info!(url = %handle.url, "Moment simulator listening");
    app::shutdown_signal().await;
    let _ = stop.send(true);
    Ok(())
}

async fn run_dev(options: dev::DevOptions) -> anyhow::Result<()> {
    let mut running = dev::start(options).await?;
    println!("{}", running.instructions());
    tokio::select! {
        _ = app::shutdown_signal() => running.stop().await,
        result = running.service_stopped() => result,
    }
}

fn fail(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(2)
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
