//! The bench's copy of the one statement the service sends for a webhook, to be replaced by
//! the library's named statement.

/// A hand-written copy of the statement `store::webhook_events::record` sends for a mandate's
/// session, to be replaced by the library's named statement. The values are written inline, the
/// session is `'ps_pgb_' || :i` (pgbench's variable `i`), and `payload`, already quoted for SQL,
/// is the event stored.
pub fn webhook(payload: &str) -> String {
    format!(
        "with moved as (update mandate set status = 'active', session_id = coalesce(session_id, 'ps_pgb_' || :i), \
         customer_id = coalesce('cus_bench', customer_id), payment_method_id = coalesce('pmt_bench', payment_method_id), \
         payment_id = coalesce('pay_bench', payment_id), failure = coalesce(null, failure), locked_until = null, \
         updated_at = now() where id = coalesce(null, (select id from mandate where session_id = 'ps_pgb_' || :i)) \
         and status = any('{{pending,active}}') returning id), \
         known as (select exists (select 1 from moved) or exists (select 1 from mandate where session_id = 'ps_pgb_' || :i) as yes) \
         insert into webhook_event (webhook_id, event_id, event_type, session_id, external_reference, payload, outcome, applied_at) \
         select 'msg_' || gen_random_uuid(), 'evt_bench', 'payment_session.completed', 'ps_pgb_' || :i, null, '{}', \
         case when known.yes then 'applied' else 'deferred' end, case when known.yes then now() end from known \
         on conflict (webhook_id) do nothing returning outcome, (select id from moved limit 1)",
        payload
    )
}
