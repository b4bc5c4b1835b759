//! The service's own webhook statement, made a pgbench command.

use moment_mandates::store::webhook_events::MANDATE_WEBHOOK;

/// `store::webhook_events::MANDATE_WEBHOOK`, the very statement the service sends for a
/// mandate's webhook, with its placeholders replaced by values a pgbench script can carry:
/// the session is `'ps_pgb_' || :i` (pgbench's variable `i`), the mandate moves to `active`,
/// and `payload`, already quoted for SQL, is the event stored.
pub fn webhook(payload: &str) -> String {
    let session = "'ps_pgb_' || :i";
    let payload = format!("'{payload}'");
    // By number, highest first, so that `$1` never eats the start of `$14`.
    let values: [(u8, &str); 16] = [
        (16, &payload),
        (15, "null"),
        (14, session),
        (13, "'payment_session.completed'"),
        (12, "'evt_bench'"),
        (11, "'msg_' || gen_random_uuid()"),
        (10, "null::text"),
        (9, "null::bigint"),
        (8, "'{pending,active}'::text[]"),
        (7, "null::jsonb"),
        (6, "'pay_bench'"),
        (5, "'pmt_bench'"),
        (4, "'cus_bench'"),
        (3, "'active'"),
        (2, session),
        (1, "null::uuid"),
    ];
    values
        .iter()
        .fold(MANDATE_WEBHOOK.to_owned(), |sql, (n, value)| {
            sql.replace(&format!("${n}"), value)
        })
}
