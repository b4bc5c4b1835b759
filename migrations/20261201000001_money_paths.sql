-- Money paths under review: a charge status for outcomes only an operator can settle, fenced
-- leases, sends counted before they start, and webhook outcomes for events that must not move
-- anything.

-- `needs_review`: the service can no longer learn or safely retry the outcome (consent was
-- withdrawn after a send whose answer never came, Moment's idempotency window passed, Moment
-- replayed an error, or its answer did not match the charge). A webhook or reconciliation can
-- still settle it.
alter table charge drop constraint charge_status_check;
alter table charge add constraint charge_status_check
    check (status in ('pending', 'processing', 'succeeded', 'failed', 'needs_review'));

-- Why a charge needs review: `{code, message}`.
alter table charge add column review_reason jsonb;

-- The holder of `locked_until`: every write that releases the lease names it, so a holder
-- whose lease ran out and was taken over can no longer write.
alter table charge add column lease_token uuid;

-- Sends to Moment begun (counted before the call, so a crash mid-call still counts one). A
-- charge with none was never seen by Moment and can fail outright; one with some can only be
-- settled by Moment or an operator.
alter table charge add column sends integer not null default 0;
-- Charges pending from before: any of them may have reached Moment already.
update charge set sends = greatest(attempts, 1) where status = 'pending';

-- When the customer's return last fetched the session from Moment (at most one fetch per
-- mandate every few seconds, however often the return is hit).
alter table mandate add column refreshed_at timestamptz;

-- The deferred lookup by session (a session's own create answer looks for its waiting events).
create index webhook_event_deferred_session_idx on webhook_event (session_id)
    where outcome = 'deferred';

-- Retention deletes old settled events by age.
create index webhook_event_received_idx on webhook_event (received_at);

comment on column webhook_event.outcome is
    'applied, ignored, deferred (session not known yet), orphaned (deferred past 72 h), '
    'mismatch (names our record but not its session, mode, amount or currency) or unreadable '
    '(a verified payment_session event whose data cannot be read)';
