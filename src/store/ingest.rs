//! Group commit for Moment's webhooks: deliveries that arrive together are stored together,
//! in one statement and one commit, and each request is answered only once its batch has
//! committed (nothing is acknowledged before it is stored).
//!
//! A request hands its delivery to one of [`SHARDS`] writers, chosen by the delivery's
//! session, and waits. A writer takes whatever has queued while its last batch ran (up to
//! [`MAX_BATCH`]), so a lone delivery goes straight through and batches grow only with the
//! load. Every delivery of one session goes to one writer, and a batch never holds two
//! deliveries of one session, of one record or with one `webhook-id` (the later one waits for
//! the next batch): writers never lock each other's rows, and a record moves in the order its
//! deliveries came. A batch that fails as a whole (a deadlock with another writer of the same
//! rows, say) is stored again one delivery at a time, so one cannot fail the others.

use std::collections::{HashSet, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};

use crate::store::webhook_events::{self, Delivery, Recorded};

/// Writers, each storing one batch at a time.
pub const SHARDS: usize = 2;
/// Deliveries in one batch, at most.
pub const MAX_BATCH: usize = 64;
/// Deliveries waiting for a writer, at most, before requests wait to hand theirs over.
const QUEUE: usize = 1024;

type Reply = oneshot::Sender<sqlx::Result<Option<Recorded>>>;

/// The writers' entrance; cheap to clone. The writers stop when the last clone is dropped.
#[derive(Clone)]
pub struct Ingest {
    shards: Vec<mpsc::Sender<(Delivery, Reply)>>,
}

impl Ingest {
    /// Starts the writers on the current runtime.
    pub fn start(db: PgPool) -> Self {
        let shards = (0..SHARDS)
            .map(|_| {
                let (tx, rx) = mpsc::channel(QUEUE);
                tokio::spawn(write(db.clone(), rx));
                tx
            })
            .collect();
        Self { shards }
    }

    /// Stores `delivery` with whatever arrives beside it; `None` for a duplicate
    /// `webhook-id`, as `webhook_events::record_one`.
    pub async fn store(&self, delivery: Delivery) -> sqlx::Result<Option<Recorded>> {
        let mut hasher = DefaultHasher::new();
        delivery
            .target()
            .unwrap_or(&delivery.webhook_id)
            .hash(&mut hasher);
        let shard = &self.shards[(hasher.finish() % self.shards.len() as u64) as usize];
        let (reply, answer) = oneshot::channel();
        shard
            .send((delivery, reply))
            .await
            .map_err(|_| sqlx::Error::WorkerCrashed)?;
        answer.await.map_err(|_| sqlx::Error::WorkerCrashed)?
    }
}

/// What keeps two deliveries out of one batch.
fn keys(d: &Delivery) -> impl Iterator<Item = String> + '_ {
    [
        Some(format!("w:{}", d.webhook_id)),
        d.target().map(|s| format!("s:{s}")),
        d.our_id().map(|id| format!("o:{id}")),
    ]
    .into_iter()
    .flatten()
}

/// A batch being filled: deliveries in their order of arrival, none sharing a key with
/// another; those that do wait for a later batch, in their order, and so does every later
/// delivery that shares a key with one waiting.
struct Filling<T> {
    batch: Vec<(Delivery, T)>,
    later: VecDeque<(Delivery, T)>,
    taken: HashSet<String>,
}

impl<T> Filling<T> {
    fn new() -> Self {
        Self {
            batch: Vec::new(),
            later: VecDeque::new(),
            taken: HashSet::new(),
        }
    }

    fn admit(&mut self, job: (Delivery, T)) {
        let free = keys(&job.0).all(|k| !self.taken.contains(&k));
        // A delivery held back keeps its keys taken too, so that none sharing one overtakes it.
        self.taken.extend(keys(&job.0));
        if self.batch.len() < MAX_BATCH && free {
            self.batch.push(job);
        } else {
            self.later.push_back(job);
        }
    }

    /// Whether more may be taken from the queue.
    fn open(&self) -> bool {
        self.batch.len() < MAX_BATCH && self.later.len() < MAX_BATCH
    }
}

/// One writer: batch after batch until every sender is gone.
async fn write(db: PgPool, mut queue: mpsc::Receiver<(Delivery, Reply)>) {
    let mut held: VecDeque<(Delivery, Reply)> = VecDeque::new();
    loop {
        let mut filling = Filling::new();
        for job in held.drain(..) {
            filling.admit(job);
        }
        if filling.batch.is_empty() {
            match queue.recv().await {
                Some(job) => filling.admit(job),
                None => return,
            }
        }
        while filling.open() {
            match queue.try_recv() {
                Ok(job) => filling.admit(job),
                Err(_) => break,
            }
        }
        held = filling.later;
        let batch = filling.batch;
        // In a task of its own: a panic fails this batch's requests (their replies are
        // dropped), never the writer.
        let db = db.clone();
        let _ = tokio::spawn(async move { commit(&db, batch).await }).await;
    }
}

/// Stores a batch and answers each of its requests.
async fn commit(db: &PgPool, batch: Vec<(Delivery, Reply)>) {
    if let [(delivery, _)] = batch.as_slice() {
        crate::metrics::webhook_commit();
        let result = webhook_events::record_one(db, delivery).await;
        if let Some((_, reply)) = batch.into_iter().next() {
            let _ = reply.send(result);
        }
        return;
    }
    let deliveries: Vec<&Delivery> = batch.iter().map(|(d, _)| d).collect();
    match webhook_events::record_batch(db, &deliveries).await {
        Ok(results) => {
            crate::metrics::webhook_commit();
            for ((_, reply), result) in batch.into_iter().zip(results) {
                let _ = reply.send(Ok(result));
            }
        }
        // Postgres refused the statement (a deadlock with other work, say): one delivery
        // cannot fail the others, so each is stored alone.
        Err(sqlx::Error::Database(e)) => {
            tracing::warn!(
                deliveries = batch.len(),
                error = %e,
                "a batch of webhooks could not be stored together; storing them one by one"
            );
            for (delivery, reply) in batch {
                crate::metrics::webhook_commit();
                let _ = reply.send(webhook_events::record_one(db, &delivery).await);
            }
        }
        // Postgres unreachable: every request of the batch gets its 503 now, not one after
        // another's timeout.
        Err(e) => {
            let reason = e.to_string();
            for (_, reply) in batch {
                let _ = reply.send(Err(sqlx::Error::Protocol(reason.clone())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Effect, MandateStatus, Transition};
    use crate::store::webhook_events::{Action, Outcome};

    fn delivery(webhook_id: &str, session: Option<&str>, ours: Option<u128>) -> Delivery {
        let action = match session {
            None => Action::Keep(Outcome::Ignored),
            Some(s) => Action::Apply(Box::new(Effect::Mandate(Transition {
                session_id: s.into(),
                external_reference: ours.map(uuid::Uuid::from_u128),
                to: MandateStatus::Active,
                from: &[MandateStatus::Pending],
                customer_id: None,
                payment_method_id: None,
                payment_id: None,
                failure: None,
                amount: None,
                currency: None,
            }))),
        };
        Delivery {
            webhook_id: webhook_id.into(),
            event_id: None,
            event_type: "payment_session.completed".into(),
            session_id: session.map(Into::into),
            external_reference: None,
            payload: "{}".into(),
            action,
        }
    }

    fn ids<'a, T: 'a>(jobs: impl IntoIterator<Item = &'a (Delivery, T)>) -> Vec<String> {
        jobs.into_iter()
            .map(|(d, _)| d.webhook_id.clone())
            .collect()
    }

    #[test]
    fn a_batch_never_holds_two_deliveries_of_one_id_session_or_record_and_keeps_their_order() {
        let mut f = Filling::new();
        for d in [
            delivery("w1", Some("ps_a"), Some(1)),
            delivery("w2", Some("ps_a"), None),
            delivery("w3", Some("ps_b"), Some(1)),
            delivery("w1", None, None),
            delivery("w4", None, None),
            delivery("w5", Some("ps_c"), Some(2)),
            delivery("w6", Some("ps_a"), Some(1)),
            // Shares only its session with w3, which waits: it waits behind it.
            delivery("w7", Some("ps_b"), None),
        ] {
            f.admit((d, ()));
        }
        assert_eq!(ids(&f.batch), ["w1", "w4", "w5"]);
        assert_eq!(ids(&f.later), ["w2", "w3", "w1", "w6", "w7"]);
        // The next batch takes them in their order, again one per session.
        let mut next = Filling::new();
        for job in f.later {
            next.admit(job);
        }
        assert_eq!(ids(&next.batch), ["w2", "w3", "w1"]);
        assert_eq!(ids(&next.later), ["w6", "w7"]);
    }

    #[test]
    fn a_batch_is_full_at_max_batch() {
        let mut f = Filling::new();
        for i in 0..MAX_BATCH + 3 {
            assert_eq!(f.open(), i < MAX_BATCH);
            f.admit((delivery(&format!("w{i}"), None, None), ()));
        }
        assert_eq!(f.batch.len(), MAX_BATCH);
        assert_eq!(f.later.len(), 3);
        assert!(!f.open());
    }
}
