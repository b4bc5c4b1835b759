//! The benchmark's sizes, and the command line that picks one.

use std::path::PathBuf;

use anyhow::{Context as _, bail};

#[derive(Clone)]
pub struct Size {
    pub name: &'static str,
    /// Seconds of each pgbench and ingestion run.
    pub secs: u64,
    /// Pending mandates seeded for the ingestion runs (an exhausted pool ends a run early).
    pub webhook_pool: usize,
    /// Mandates charged in the billing run.
    pub mandates: usize,
    /// Subscriptions due at once on the first of the month.
    pub subscriptions: usize,
}

pub const FULL: Size = Size {
    name: "full",
    secs: 10,
    webhook_pool: 300_000,
    mandates: 10_000,
    subscriptions: 20_000,
};
pub const TINY: Size = Size {
    name: "tiny",
    secs: 1,
    webhook_pool: 20_000,
    mandates: 200,
    subscriptions: 200,
};

/// What the command line asks for.
pub struct Args {
    pub size: Size,
    /// Where the report goes.
    pub out: PathBuf,
}

/// Reads the program's arguments.
pub fn parse() -> anyhow::Result<Args> {
    let mut size = FULL;
    let mut out = PathBuf::from("BENCHMARKS.md");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--tiny" => size = TINY,
            "--secs" => size.secs = args.next().context("--secs needs a number")?.parse()?,
            "--mandates" => {
                size.mandates = args.next().context("--mandates needs a number")?.parse()?
            }
            "--out" => out = args.next().context("--out needs a path")?.into(),
            // What `cargo bench` adds for the libtest harness; nothing to do here.
            "--bench" => {}
            other => bail!(
                "unknown argument {other:?}: expected --tiny, --secs N, --mandates N or --out PATH"
            ),
        }
    }
    Ok(Args { size, out })
}
