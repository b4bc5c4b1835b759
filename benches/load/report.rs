//! BENCHMARKS.md, written from what the runs measured.

use std::fmt::Write as _;

use crate::Measured;
use crate::args::Size;
use crate::{BILLING_IN_FLIGHT, LATENCY_MS};

pub fn report(
    size: &Size,
    machine: &str,
    startup_ms: f64,
    idle_rss: u64,
    service_hwm: u64,
    m: &Measured,
) -> String {
    let ceiling = m
        .pgbench
        .iter()
        .filter(|(c, _, _)| *c > 1)
        .map(|(_, tps, _)| *tps)
        .fold(0.0, f64::max);
    let mib = |kib: u64| kib as f64 / 1024.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Benchmarks\n\n\
         Written by `scripts/bench` ({} size{}); rerun it to refresh this file. Every figure\n\
         below comes from one run on one machine: the ratios matter more than the absolute\n\
         numbers, because pgbench ran on the same Postgres minutes before.\n\n\
         ## Machine\n\n{machine}\n",
        size.name,
        if size.name == "tiny" {
            ", as CI runs it: too small to mean anything"
        } else {
            ""
        }
    );
    let _ = writeln!(
        s,
        "## The ceiling: pgbench running one webhook's transaction\n\n\
         `BEGIN; INSERT INTO webhook_event …; UPDATE mandate … WHERE session_id = …; END;`,\n\
         prepared statements, synchronous commit on, {} s per run, the same event payload the\n\
         service stores.\n\n\
         | clients | transactions/s | mean latency (ms) |\n|---:|---:|---:|",
        size.secs
    );
    for (c, tps, lat) in &m.pgbench {
        let _ = writeln!(s, "| {c} | {tps:.0} | {lat:.2} |");
    }
    let _ = writeln!(
        s,
        "\nCeiling (best of 16 and 64 clients): **{ceiling:.0}/s**.\n\n\
         For comparison, pgbench running the one statement the service sends instead (the\n\
         update and the insert in a CTE, one round trip, no `BEGIN`) at 64 clients: **{:.0}/s**,\n\
         {:.2} × the ceiling. That is the database's share of a webhook alone; the service\n\
         shares the same two cores with it.\n",
        m.statement_tps,
        m.statement_tps / ceiling
    );
    let _ = writeln!(
        s,
        "## Webhook ingestion\n\n\
         Signed `payment_session.completed` events for distinct pending mandates, signed with a\n\
         fresh timestamp each, posted to the release build over keep-alive connections for {} s\n\
         per row. Every event answered 204 was checked afterwards: stored once and its mandate\n\
         `active`.\n\n\
         | connections | events/s | p50 (ms) | p99 (ms) | p99.9 (ms) | ratio to pgbench at the same clients | ratio to the ceiling | errors | peak RSS (MiB) |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|",
        size.secs
    );
    for r in m.ingestion.iter().chain(std::iter::once(&m.flood)) {
        let same = m
            .pgbench
            .iter()
            .find(|(c, _, _)| *c == r.connections)
            .map(|(_, tps, _)| r.per_sec() / tps);
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | **{:.2}** | {} | {:.1} |",
            r.label,
            r.per_sec(),
            r.pct_ms(0.50),
            r.pct_ms(0.99),
            r.pct_ms(0.999),
            same.map_or("–".into(), |x| format!("{x:.2}")),
            r.per_sec() / ceiling,
            r.errors,
            mib(r.peak_rss_kib)
        );
    }
    let b = &m.billing;
    let limit = BILLING_IN_FLIGHT as f64 / (LATENCY_MS as f64 / 1000.0);
    let _ = writeln!(
        s,
        "\nThe last row is the abuse check: the good events of the 16-connection row while 64 more\n\
         connections post events with a wrong signature as fast as they can: {} forged events\n\
         ({:.0}/s) were answered 401 alongside, and nothing of theirs was stored.\n\n\
         ## Billing run\n\n\
         {} active mandates, made through checkout at the simulator beforehand ({:.1} s), then\n\
         charged once each through `POST /charges` with {} requests in flight while the\n\
         simulator answers every call after {} ms. The simulator's limit is in-flight ÷ latency =\n\
         {limit:.0} charges/s.\n\n\
         | charges/s | ratio to the simulator's limit | p50 (ms) | p99 (ms) | p99.9 (ms) | until all `succeeded` (s) | Moment sessions | Moment payments | peak RSS (MiB) |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|\n\
         | {:.0} | **{:.2}** | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} | {:.1} |\n",
        m.flood.rejected,
        m.flood.rejected as f64 / m.flood.secs,
        b.ok,
        m.billing_setup_secs,
        BILLING_IN_FLIGHT,
        LATENCY_MS,
        b.per_sec(),
        b.per_sec() / limit,
        b.pct_ms(0.50),
        b.pct_ms(0.99),
        b.pct_ms(0.999),
        m.billing_settled_secs,
        m.sim_sessions,
        m.sim_payments,
        mib(b.peak_rss_kib)
    );
    let _ = writeln!(
        s,
        "## Events out\n\n\
         Every event of the billing run ({} of them: each mandate created and made active, each\n\
         charge created, processing and succeeded), held for an endpoint that was disabled\n\
         meanwhile, then fanned out and delivered to a receiver in the benchmark's own process\n\
         once it was enabled: {:.1} s, **{:.0} events/s** end to end (signed, one HTTP request\n\
         each, 8 in flight to the one endpoint).\n",
        m.events_out,
        m.events_out_secs,
        m.events_out as f64 / m.events_out_secs
    );
    let _ = writeln!(
        s,
        "## The first of the month: the scheduler\n\n\
         {} subscriptions falling due at the same moment on the billing run's mandates, charged by\n\
         the scheduler of a fresh `serve` (its background worker, `WORKER_INTERVAL_SECS=1`) while\n\
         the simulator answers every call after {} ms. The simulator's limit is the scheduler's\n\
         concurrency ÷ latency (the merchant's webhook endpoint is off: events out are measured\n\
         above). Transactions are Postgres commits in the whole run per charge (a statement\n\
         outside a transaction is one): the claims, the charges, each send's check, Moment's\n\
         answers, the three webhooks Moment sends for each charge, and the settlements. WAL is\n\
         the write-ahead log Postgres wrote per charge (KiB): its writes, which swing less with\n\
         the machine than its CPU. CPU is milliseconds per charge. A call is the mean time of\n\
         the scheduler's calls to Moment as the service measured them; the simulator's overrun,\n\
         how long after its latency its answers were ready on average (its own wait for a core:\n\
         it runs in a session of its own at a higher priority, as Moment would run on machines\n\
         of its own); slots in calls, the calls' time over the concurrency × the run. The\n\
         tables are vacuumed first, as autovacuum would have; whether anything is left unsent\n\
         is read every 50 ms.\n\n\
         | concurrency | charges/s | ratio to the simulator's limit | all sent (s) | all settled (s) | a call (ms) | simulator's overrun (ms) | slots in calls | transactions per charge | WAL per charge (KiB) | service CPU (ms) | Postgres CPU (ms) | simulator CPU (ms) |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        m.scheduled.first().map_or(0, |b| b.charges),
        LATENCY_MS
    );
    for b in &m.scheduled {
        let limit = b.concurrency as f64 * 1000.0 / LATENCY_MS as f64;
        let per = |x: f64| 1000.0 * x / b.charges as f64;
        let _ = writeln!(
            s,
            "| {} | {:.0} | **{:.3}** | {:.1} | {:.1} | {:.1} | {:.2} | {:.0} % | {:.1} | {:.1} | {:.2} | {:.2} | {:.2} |",
            b.concurrency,
            b.per_sec(),
            b.per_sec() / limit,
            b.sent_secs,
            b.settled_secs,
            b.call_ms,
            b.sim_overrun_ms,
            b.occupancy() * 100.0,
            b.xacts_per_charge,
            b.wal_kib_per_charge,
            per(b.cpu.service),
            per(b.cpu.postgres),
            per(b.cpu.sim)
        );
    }
    s.push('\n');
    let _ = writeln!(
        s,
        "## Where the CPU went\n\n\
         Cores busy on average during each run (CPU seconds ÷ wall seconds, from `/proc`), out\n\
         of the machine's {}.\n\n\
         | run | service | Postgres | simulator | load generator | total |\n|---|---:|---:|---:|---:|---:|",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for r in m.ingestion.iter().chain([&m.flood, &m.billing]) {
        let _ = writeln!(s, "| {} {}", r.label, r.cpu.row(r.secs));
    }
    let _ = writeln!(
        s,
        "\nIn the billing run a Moment call took {:.1} ms on average, and the service answered\n\
         `POST /charges` in {:.1} ms on average.\n",
        m.moment_ms, m.handler_ms
    );
    let _ = writeln!(
        s,
        "## Footprint\n\n\
         | start-up to ready (migrations on an empty database) | RSS at idle | peak RSS over the whole run |\n\
         |---:|---:|---:|\n\
         | {startup_ms:.0} ms | {:.1} MiB | {:.1} MiB |\n",
        mib(idle_rss),
        mib(service_hwm)
    );
    s.push_str(include_str!("analysis.md"));
    s
}
