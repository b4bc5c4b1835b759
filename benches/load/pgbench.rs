//! pgbench on the service's own Postgres: one webhook's writes as a transaction (the
//! ceiling) and as the service's one statement.

use std::process::Command;

use anyhow::{Context as _, bail};

use crate::drivers::sample_event;
use crate::statement;

/// One webhook's writes as a `BEGIN … END` transaction: the ceiling the issue names.
pub fn transaction_script(rows: i64) -> String {
    let payload = sample_event("ps_pgb_0", "00000000-0000-0000-0000-000000000000");
    format!(
        "\\set i random(1, {rows})\n\
         BEGIN;\n\
         INSERT INTO webhook_event (webhook_id, event_id, event_type, session_id, payload, outcome, applied_at) \
         VALUES ('msg_' || gen_random_uuid(), 'evt_bench', 'payment_session.completed', 'ps_pgb_' || :i, '{}', 'applied', now());\n\
         UPDATE mandate SET status = 'active', customer_id = 'cus_bench', payment_method_id = 'pmt_bench', \
         payment_id = 'pay_bench', locked_until = NULL, updated_at = now() WHERE session_id = 'ps_pgb_' || :i;\n\
         END;\n",
        payload.replace('\'', "''")
    )
}

/// The same writes as the one statement the service sends (`store::webhook_events::record`),
/// with the row found by session and updated every time.
pub fn statement_script(rows: i64) -> String {
    let payload = sample_event("ps_pgb_0", "00000000-0000-0000-0000-000000000000");
    format!(
        "\\set i random(1, {rows})\n{};\n",
        statement::webhook(&payload.replace('\'', "''"))
    )
}

/// pgbench on the same server running `script`. Returns (tps, mean latency ms).
pub fn run_pgbench(
    url: &str,
    clients: usize,
    secs: u64,
    script_text: &str,
) -> anyhow::Result<(f64, f64)> {
    let script = std::env::temp_dir().join(format!("mm-bench-{}.sql", std::process::id()));
    std::fs::write(&script, script_text)?;
    let output = Command::new("pgbench")
        .args(["-n", "-M", "prepared", "-T", &secs.to_string()])
        .args([
            "-c",
            &clients.to_string(),
            "-j",
            &clients.min(2).to_string(),
        ])
        .arg("-f")
        .arg(&script)
        .arg(url)
        .output()
        .context("cannot run pgbench (it comes with PostgreSQL's server or client package)")?;
    let _ = std::fs::remove_file(&script);
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "pgbench failed: {}{}",
            stdout,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let number_after = |prefix: &str| {
        stdout.lines().find_map(|l| {
            l.trim()
                .strip_prefix(prefix)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse::<f64>().ok())
        })
    };
    let tps = number_after("tps = ").context("no tps in pgbench's output")?;
    let latency = number_after("latency average = ").unwrap_or(f64::NAN);
    Ok((tps, latency))
}
