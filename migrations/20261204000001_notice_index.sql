-- The announcements' look-up. Every pass of the scheduler marks the active subscriptions whose
-- next charge falls within the notice and has not been announced (`announce_upcoming`, which
-- writes `subscription.charge_upcoming`). No index served it (the due index also requires no
-- open charge and no retry, and the status index holds every active subscription), so each
-- pass read the whole subscription table. This one holds only the subscriptions still to
-- announce: a subscription enters when its schedule moves on to a period not yet announced,
-- and leaves when that period is announced.
create index subscription_notice_idx on subscription (next_charge_at)
    where status = 'active' and notified_period < next_period;
