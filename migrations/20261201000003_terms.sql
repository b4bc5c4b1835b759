-- A mandate's terms: what the customer consented to, as Moment's `mandate_options`. Null only
-- for mandates made before terms existed; their ceiling is their own amount.
alter table mandate add column terms jsonb;

-- The API's view of a mandate now shows its terms.
create or replace function mandate_view(m mandate) returns jsonb language sql stable as $$
    select jsonb_build_object(
        'id', m.id, 'status', m.status, 'amount', m.amount, 'currency', m.currency,
        'reference', m.reference, 'metadata', m.metadata, 'checkout_url', m.checkout_url,
        'session_id', m.session_id, 'customer_id', m.customer_id,
        'payment_method_id', m.payment_method_id, 'payment_id', m.payment_id,
        'failure', m.failure,
        'terms', coalesce(m.terms, jsonb_build_object('type', 'on_demand',
                                                      'amount', jsonb_build_object('max', m.amount))),
        'created_at', to_char(m.created_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'updated_at', to_char(m.updated_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
$$;

-- The ledger's lookups: a mandate's charges by time.
create index charge_mandate_created_idx on charge (mandate_id, created_at);
