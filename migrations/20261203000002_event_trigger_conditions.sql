-- The event triggers are called only for the changes that make an event.
--
-- A row trigger's function is a PL/pgSQL call for every row a statement writes; a trigger's
-- `when` condition is checked without one. Most updates make no event: a lease taken or
-- renewed, a send counted, a subscription's schedule moved on, a charge's answer kept. On the
-- first of the month the scheduler makes three such updates of each subscription and one of
-- each charge, and each called two functions (the count before, the event after) for nothing.
--
-- The functions are unchanged. The conditions below are what they test: a change of status for
-- a mandate or a charge; for a subscription, any column `subscription_event_types` looks at.
-- A new event type of a subscription that looks at another column must add it to both
-- conditions here (the events tests fail otherwise).

drop trigger mandate_event_seq on mandate;
create trigger mandate_event_seq_insert before insert on mandate
    for each row execute function mandate_event_seq();
create trigger mandate_event_seq_update before update on mandate
    for each row when (new.status is distinct from old.status)
    execute function mandate_event_seq();

drop trigger charge_event_seq on charge;
create trigger charge_event_seq_insert before insert on charge
    for each row execute function charge_event_seq();
create trigger charge_event_seq_update before update on charge
    for each row when (new.status is distinct from old.status)
    execute function charge_event_seq();

drop trigger subscription_event_seq on subscription;
create trigger subscription_event_seq_insert before insert on subscription
    for each row execute function subscription_event_seq();
create trigger subscription_event_seq_update before update on subscription
    for each row when (
        (new.status, new.amount, new.cancel_at_period_end, new.resume_at, new.retry_at,
         new.dunning_exhausted_at)
        is distinct from
        (old.status, old.amount, old.cancel_at_period_end, old.resume_at, old.retry_at,
         old.dunning_exhausted_at)
        or new.notified_period > old.notified_period)
    execute function subscription_event_seq();

drop trigger subscription_event_update on subscription;
create trigger subscription_event_update after update on subscription
    for each row when (
        (new.status, new.amount, new.cancel_at_period_end, new.resume_at, new.retry_at,
         new.dunning_exhausted_at)
        is distinct from
        (old.status, old.amount, old.cancel_at_period_end, old.resume_at, old.retry_at,
         old.dunning_exhausted_at)
        or new.notified_period > old.notified_period)
    execute function subscription_event();
