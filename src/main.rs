//! The `moment-mandates` command: `serve`, `migrate`, `sim` and `dev` (see `cli`).

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    moment_mandates::cli::run().await
}
