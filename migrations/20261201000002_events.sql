-- The event log (a transactional outbox) and webhooks out to the merchant.

-- Each mandate and charge counts its changes; an event carries the count at its change, so a
-- consumer can drop an older event that arrives after a newer one.
alter table mandate add column event_seq bigint not null default 0;
alter table charge add column event_seq bigint not null default 0;

-- Every state change of a mandate or a charge, written by a trigger in the very statement that
-- makes the change: no change without its event, no event without its change.
create table event (
    id            uuid        primary key,
    -- Insertion order within a transaction; across transactions readers order by `xid` first.
    position      bigserial   not null,
    -- The writing transaction. A reader takes only rows whose transaction is older than every
    -- transaction still running (`xid < pg_snapshot_xmin(pg_current_snapshot())`), ordered by
    -- (xid, position): a transaction that commits late always sorts after what was read.
    xid           xid8        not null default pg_current_xact_id(),
    type          text        not null,
    resource_type text        not null,
    resource_id   uuid        not null,
    sequence      bigint      not null,
    -- The resource as the API shows it at that change.
    data          jsonb       not null,
    created_at    timestamptz not null default now()
);

create index event_order_idx on event (xid, position);
create index event_resource_idx on event (resource_id, xid, position);
-- `GET /events?type=`: a rare type must not cost a scan of the whole log.
create index event_type_idx on event (type, xid, position);
create index event_created_idx on event (created_at);

-- The API's view of a mandate; `api::MandateResponse` has the same fields (a test compares).
create function mandate_view(m mandate) returns jsonb language sql stable as $$
    select jsonb_build_object(
        'id', m.id, 'status', m.status, 'amount', m.amount, 'currency', m.currency,
        'reference', m.reference, 'metadata', m.metadata, 'checkout_url', m.checkout_url,
        'session_id', m.session_id, 'customer_id', m.customer_id,
        'payment_method_id', m.payment_method_id, 'payment_id', m.payment_id,
        'failure', m.failure,
        'created_at', to_char(m.created_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'updated_at', to_char(m.updated_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
$$;

-- The API's view of a charge; `api::ChargeResponse` has the same fields (a test compares).
create function charge_view(c charge) returns jsonb language sql stable as $$
    select jsonb_build_object(
        'id', c.id, 'mandate_id', c.mandate_id, 'status', c.status, 'amount', c.amount,
        'currency', c.currency, 'reference', c.reference, 'metadata', c.metadata,
        'session_id', c.session_id, 'payment_id', c.payment_id, 'failure', c.failure,
        'review_reason', c.review_reason,
        'created_at', to_char(c.created_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'updated_at', to_char(c.updated_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
$$;

-- `mandate.created` on insert, `mandate.<status>` on each change of status. The count is bumped
-- before the row is written; the event is written after, for rows actually written only (an
-- `insert … on conflict do nothing` that finds its key taken writes no row, and no event).
create function mandate_event_seq() returns trigger language plpgsql as $$
begin
    if tg_op = 'INSERT' then
        new.event_seq := 1;
    elsif new.status is distinct from old.status then
        new.event_seq := old.event_seq + 1;
    end if;
    return new;
end
$$;

create trigger mandate_event_seq before insert or update on mandate
    for each row execute function mandate_event_seq();

create function mandate_event() returns trigger language plpgsql as $$
begin
    insert into event (id, type, resource_type, resource_id, sequence, data)
    values (gen_random_uuid(),
            'mandate.' || case when tg_op = 'INSERT' then 'created' else new.status end,
            'mandate', new.id, new.event_seq, mandate_view(new));
    return null;
end
$$;

create trigger mandate_event_insert after insert on mandate
    for each row execute function mandate_event();

create trigger mandate_event_update after update on mandate
    for each row when (new.status is distinct from old.status)
    execute function mandate_event();

-- `charge.created` on insert, `charge.<status>` on each change of status. The count is bumped
-- before the row is written; the event is written after, for rows actually written only (an
-- `insert … on conflict do nothing` that finds its key taken writes no row, and no event).
create function charge_event_seq() returns trigger language plpgsql as $$
begin
    if tg_op = 'INSERT' then
        new.event_seq := 1;
    elsif new.status is distinct from old.status then
        new.event_seq := old.event_seq + 1;
    end if;
    return new;
end
$$;

create trigger charge_event_seq before insert or update on charge
    for each row execute function charge_event_seq();

create function charge_event() returns trigger language plpgsql as $$
begin
    insert into event (id, type, resource_type, resource_id, sequence, data)
    values (gen_random_uuid(),
            'charge.' || case when tg_op = 'INSERT' then 'created' else new.status end,
            'charge', new.id, new.event_seq, charge_view(new));
    return null;
end
$$;

create trigger charge_event_insert after insert on charge
    for each row execute function charge_event();

create trigger charge_event_update after update on charge
    for each row when (new.status is distinct from old.status)
    execute function charge_event();

-- The merchant's endpoints.
create table webhook_endpoint (
    id               uuid        primary key,
    url              text        not null,
    -- Event types sent; null for all.
    event_types      text[],
    enabled          boolean     not null default true,
    -- Why it was disabled: `gone` (410), `failing` (5 days), `merchant`.
    disabled_reason  text,
    -- The signing secret (`whsec_…`), and during a rotation the previous one until it expires.
    secret           text        not null,
    old_secret       text,
    old_secret_until timestamptz,
    -- Where the fan-out stands in the event log: the (xid, position) of the last event looked at.
    -- A disabled endpoint's cursor stays put: enabled again, it gets what it missed.
    cursor_xid       xid8        not null default pg_current_xact_id(),
    cursor_position  bigint      not null default 0,
    -- When the fan-out last served it: endpoints take turns.
    fanned_out_at    timestamptz,
    -- Since when every delivery has failed (null while it succeeds).
    failing_since    timestamptz,
    created_at       timestamptz not null default now(),
    updated_at       timestamptz not null default now()
);

-- One event for one endpoint, sent until it is answered 2xx or given up. A redelivery is a
-- delivery of its own.
create table delivery (
    id              uuid        primary key,
    event_id        uuid        not null references event (id) on delete cascade,
    endpoint_id     uuid        not null references webhook_endpoint (id) on delete cascade,
    -- 'pending', 'delivered' or 'failed' (given up, or the endpoint disabled).
    status          text        not null default 'pending'
        check (status in ('pending', 'delivered', 'failed')),
    attempts        integer     not null default 0,
    next_attempt_at timestamptz not null default now(),
    locked_until    timestamptz,
    lease_token     uuid,
    created_at      timestamptz not null default now(),
    updated_at      timestamptz not null default now()
);

create index delivery_due_idx on delivery (next_attempt_at) where status = 'pending';
create index delivery_event_idx on delivery (event_id);
create index delivery_endpoint_idx on delivery (endpoint_id, status);
create index delivery_endpoint_due_idx on delivery (endpoint_id, next_attempt_at) where status = 'pending';

-- Every attempt: when, what came back, how long it took.
create table delivery_attempt (
    id           bigserial   primary key,
    delivery_id  uuid        not null references delivery (id) on delete cascade,
    attempted_at timestamptz not null default now(),
    -- The HTTP status, or null when no answer came (`error` says why).
    status_code  integer,
    error        text,
    duration_ms  integer     not null
);

create index delivery_attempt_delivery_idx on delivery_attempt (delivery_id, id);
