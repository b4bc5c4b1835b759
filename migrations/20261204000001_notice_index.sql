-- The announcements' look-up. Every pass of the scheduler marks the active subscriptions whose
-- next charge falls within the notice and has not been announced (`announce_upcoming`, which
-- writes `subscription.charge_upcoming`). No index served it (the due index also requires no
-- open charge and no retry, and the status index holds every active subscription), so each
-- pass read the whole subscription table. This index holds the active subscriptions whose next
-- period is not announced yet (most of them, between one notice and the next charge), by when
-- that period falls due: a pass reads only those whose notice has come.
--
-- The price: an announcement changes `notified_period`, a column of the index's condition, so
-- it is no longer a heap-only update (it writes the row's index entries, once a period, as
-- moving the schedule on already does); and the index gains an entry when the schedule moves
-- on and when the period's outcome is recorded.
create index subscription_notice_idx on subscription (next_charge_at)
    where status = 'active' and notified_period < next_period;
