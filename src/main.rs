//! The `moment-mandates` command: `serve`, `migrate`, `sim` and `dev` (see `cli`).

use std::process::ExitCode;

/// A faster allocator than the system's for a service that makes and drops many small
/// buffers a request (measured in `benches/load/analysis.md`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    moment_mandates::cli::run().await
}
