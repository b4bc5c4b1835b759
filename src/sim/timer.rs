//! The simulator's latency, kept to its deadline. Tokio's timer rounds a sleep up to its next
//! millisecond and, while the runtime's threads are busy, fires it when one of them next looks:
//! on the benchmark's first of the month a 50 ms latency came to 52.5 ms on average. One thread
//! of its own keeps the deadlines in order and wakes each waiting task at its own (the
//! operating system's timer); the task then waits for a thread of the runtime as any woken
//! task does, which the simulator's stats show (`latency_overrun_micros`).

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::OnceLock;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Instant;

use tokio::sync::oneshot;

/// A waiter: its deadline, and how to wake it.
struct Waiter(Instant, oneshot::Sender<()>);

impl PartialEq for Waiter {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Eq for Waiter {}

impl PartialOrd for Waiter {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Waiter {
    /// The earliest deadline first (`BinaryHeap` is a max-heap).
    fn cmp(&self, other: &Self) -> Ordering {
        other.0.cmp(&self.0)
    }
}

/// The timer thread's inbox, the thread started with the first waiter.
fn inbox() -> Option<&'static mpsc::Sender<Waiter>> {
    static INBOX: OnceLock<Option<mpsc::Sender<Waiter>>> = OnceLock::new();
    INBOX
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel();
            std::thread::Builder::new()
                .name("sim-timer".into())
                .spawn(move || run(rx))
                .ok()
                .map(|_| tx)
        })
        .as_ref()
}

fn run(inbox: mpsc::Receiver<Waiter>) {
    let mut waiting = BinaryHeap::new();
    loop {
        let now = Instant::now();
        while waiting.peek().is_some_and(|w: &Waiter| w.0 <= now) {
            if let Some(Waiter(_, wake)) = waiting.pop() {
                // A waiter gone (its request dropped) needs no waking.
                let _ = wake.send(());
            }
        }
        let next = match waiting.peek() {
            Some(w) => inbox.recv_timeout(w.0.saturating_duration_since(now)),
            None => inbox.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match next {
            Ok(w) => waiting.push(w),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Waits until `deadline`. Falls back to tokio's timer if the thread could not be started.
pub async fn sleep_until(deadline: Instant) {
    if deadline <= Instant::now() {
        return;
    }
    let (wake, woken) = oneshot::channel();
    match inbox().map(|tx| tx.send(Waiter(deadline, wake))) {
        Some(Ok(())) => {
            // The thread gone before the deadline: tokio's timer keeps it.
            if woken.await.is_err() {
                tokio::time::sleep_until(deadline.into()).await;
            }
        }
        _ => tokio::time::sleep_until(deadline.into()).await,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn waiters_wake_at_their_own_deadlines_in_any_order() {
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let woke = |d: Instant| async move {
            sleep_until(d).await;
            Instant::now()
        };
        let (late, early, past) = tokio::join!(woke(at(600)), woke(at(30)), woke(at(0)));
        assert!(early >= at(30), "woke {:?} early", at(30) - early);
        assert!(
            early < at(400),
            "the earlier deadline waited for the later one"
        );
        assert!(late >= at(600), "woke {:?} early", at(600) - late);
        assert!(past < at(30), "a deadline already past waited");
    }
}
