//! The `moment-mandates` command: `serve` and `migrate`.

use std::process::ExitCode;

use clap::Parser;
use moment_mandates::config::{Cli, Command, LogFormat};
use moment_mandates::{app, db, telemetry};

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
            telemetry::init(config.log_format);
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
            telemetry::init(LogFormat::Text);
            report(db::connect(&config, true).await.map(|_| ()))
        }
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
