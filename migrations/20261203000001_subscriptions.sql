-- Subscriptions that bill themselves: one charge per period, exactly once, with dunning.

-- When a charge counts for its mandate's limit windows: the billing clock's time when it was
-- recorded (the real clock in `serve`, the test clock in `dev` and the tests). Rows from before
-- keep their creation time.
alter table charge add column billed_at timestamptz;
update charge set billed_at = created_at;
alter table charge alter column billed_at set default now(), alter column billed_at set not null;
drop index charge_mandate_created_idx;
create index charge_mandate_billed_idx on charge (mandate_id, billed_at);

create table subscription (
    id                   uuid        primary key,
    mandate_id           uuid        not null references mandate (id),
    status               text        not null default 'active'
        constraint subscription_status_check
        check (status in ('active', 'past_due', 'paused', 'cancelled', 'finished')),
    amount               bigint      not null check (amount > 0),
    currency             char(3)     not null,
    -- The schedule as the API shows it: unit, every, anchor, start and end dates, count,
    -- charge time, adjustment. Period n's day is computed from n alone (`domain::schedule`).
    schedule             jsonb       not null,
    reference            text,
    metadata             jsonb       not null default '{}',
    idempotency_key      text        constraint subscription_idempotency_key_key unique,
    request_hash         text        not null,
    -- The next period to bill and when it is due (null: the schedule has no more periods).
    next_period          integer     not null default 0,
    next_charge_at       timestamptz,
    -- The period whose `subscription.charge_upcoming` event went out last.
    notified_period      integer     not null default -1,
    -- The charge in flight for this subscription, whose outcome is awaited (one at a time).
    open_charge_id       uuid        references charge (id),
    -- Dunning: the period being retried, failures so far, since when, and the next retry.
    dunning_period       integer,
    dunning_failures     integer     not null default 0,
    dunning_since        timestamptz,
    retry_at             timestamptz,
    -- When retries ran out (for the `dunning.exhausted` event), and why the last one failed.
    dunning_exhausted_at timestamptz,
    last_failure         jsonb,
    -- Paused until then (null: until resumed).
    resume_at            timestamptz,
    cancel_at_period_end boolean     not null default false,
    -- The scheduler's lease while it bills this subscription.
    locked_until         timestamptz,
    lease_token          uuid,
    event_seq            bigint      not null default 0,
    created_at           timestamptz not null default now(),
    updated_at           timestamptz not null default now()
);

-- The scheduler's look-ups: what is due to bill, to retry, to resume, to announce.
create index subscription_due_idx on subscription (next_charge_at)
    where status in ('active', 'past_due') and retry_at is null and open_charge_id is null;
create index subscription_retry_idx on subscription (retry_at)
    where status = 'past_due' and open_charge_id is null;
create index subscription_resume_idx on subscription (resume_at) where status = 'paused';
create index subscription_open_idx on subscription (open_charge_id) where open_charge_id is not null;
create index subscription_mandate_idx on subscription (mandate_id, id);
create index subscription_status_idx on subscription (status, id);

-- A scheduled charge belongs to its subscription's period; each attempt (the first, then each
-- dunning retry) is a charge of its own with the idempotency key
-- `subscription:<id>:<period>:<attempt>`, so a period is charged once per attempt, whatever
-- crashes or replicas do.
alter table charge add column subscription_id uuid references subscription (id);
alter table charge add column period integer;
alter table charge add column attempt integer;
create unique index charge_subscription_period_idx on charge (subscription_id, period, attempt)
    where subscription_id is not null;

-- The API's view of a subscription (without the preview, which is computed on reading).
create function subscription_view(s subscription) returns jsonb language sql stable as $$
    select jsonb_build_object(
        'id', s.id, 'mandate_id', s.mandate_id, 'status', s.status, 'amount', s.amount,
        'currency', s.currency, 'schedule', s.schedule, 'reference', s.reference,
        'metadata', s.metadata, 'next_period', s.next_period,
        'next_charge_at', to_char(s.next_charge_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'open_charge_id', s.open_charge_id, 'last_failure', s.last_failure,
        'cancel_at_period_end', s.cancel_at_period_end,
        'resume_at', to_char(s.resume_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'dunning', case when s.dunning_period is null then null else jsonb_build_object(
            'period', s.dunning_period, 'failures', s.dunning_failures,
            'next_retry_at', to_char(s.retry_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
            'last_failure', s.last_failure) end,
        'created_at', to_char(s.created_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'updated_at', to_char(s.updated_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
$$;

-- The events one change of a subscription makes, in order.
create function subscription_event_types(old subscription, new subscription) returns text[]
language plpgsql immutable as $$
declare
    types text[] := '{}';
begin
    if old is null then
        return array['subscription.created'];
    end if;
    if new.dunning_exhausted_at is distinct from old.dunning_exhausted_at
       and new.dunning_exhausted_at is not null then
        types := types || 'dunning.exhausted'::text;
    end if;
    if new.status is distinct from old.status then
        types := types || case
            when new.status = 'active' and old.status = 'paused' then 'subscription.resumed'
            when new.status = 'active' then 'subscription.updated'
            else 'subscription.' || new.status end::text;
    elsif new.amount is distinct from old.amount
          or new.cancel_at_period_end is distinct from old.cancel_at_period_end
          or new.resume_at is distinct from old.resume_at then
        types := types || 'subscription.updated'::text;
    end if;
    if new.retry_at is distinct from old.retry_at and new.retry_at is not null then
        types := types || 'dunning.retry_scheduled'::text;
    end if;
    if new.notified_period > old.notified_period then
        types := types || 'subscription.charge_upcoming'::text;
    end if;
    return types;
end
$$;

-- The count grows by the number of events the change makes; each event carries its own.
create function subscription_event_seq() returns trigger language plpgsql as $$
begin
    if tg_op = 'INSERT' then
        new.event_seq := 1;
    else
        new.event_seq := old.event_seq + cardinality(subscription_event_types(old, new));
    end if;
    return new;
end
$$;

create trigger subscription_event_seq before insert or update on subscription
    for each row execute function subscription_event_seq();

create function subscription_event() returns trigger language plpgsql as $$
declare
    types text[];
    i int;
begin
    if tg_op = 'INSERT' then
        types := array['subscription.created'];
    else
        types := subscription_event_types(old, new);
    end if;
    for i in 1 .. coalesce(array_length(types, 1), 0) loop
        insert into event (id, type, resource_type, resource_id, sequence, data)
        values (gen_random_uuid(), types[i], 'subscription', new.id,
                new.event_seq - cardinality(types) + i, subscription_view(new));
    end loop;
    return null;
end
$$;

create trigger subscription_event_insert after insert on subscription
    for each row execute function subscription_event();

create trigger subscription_event_update after update on subscription
    for each row execute function subscription_event();

-- The API's view of a charge shows the subscription and period it bills.
create or replace function charge_view(c charge) returns jsonb language sql stable as $$
    select jsonb_build_object(
        'id', c.id, 'mandate_id', c.mandate_id, 'status', c.status, 'amount', c.amount,
        'currency', c.currency, 'reference', c.reference, 'metadata', c.metadata,
        'session_id', c.session_id, 'payment_id', c.payment_id, 'failure', c.failure,
        'review_reason', c.review_reason, 'subscription_id', c.subscription_id,
        'period', c.period,
        'created_at', to_char(c.created_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'updated_at', to_char(c.updated_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
$$;
