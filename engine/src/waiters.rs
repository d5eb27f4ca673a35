//! The log's durable LSN, and the async tasks waiting for it to reach a position without a
//! thread of their own (`Wal::poll_durable`, which terad's reads await).
//!
//! No lost wake-up: a flush stores the new durable LSN before it takes the waiters' lock, and
//! a task checks the LSN again under that lock before it registers its waker, so either the
//! check sees the new LSN or the flush finds the waker. The log's failure works the same way:
//! it is recorded before [`DurableWaiters::wake_all`] takes the lock, and the task checks for
//! it under the lock. Wakers run after the lock is released, since an executor may poll the
//! task at once and its poll takes the lock. The loom models below check both (`make loom`).

use crate::sync::AtomicU64;
use std::sync::atomic::Ordering::{Acquire, Release};
use std::task::{Context, Poll, Waker};

#[cfg(tera_loom)]
use loom::sync::Mutex;
#[cfg(not(tera_loom))]
use parking_lot::Mutex;

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct DurableWaiters {
    durable: AtomicU64,
    /// Each waiting task's waker and the LSN it waits for.
    list: Mutex<Vec<(u64, Waker)>>,
}

impl DurableWaiters {
    pub(crate) fn new(durable: u64) -> DurableWaiters {
        DurableWaiters {
            durable: AtomicU64::new(durable),
            list: Mutex::new(Vec::new()),
        }
    }

    fn lock(&self) -> impl std::ops::DerefMut<Target = Vec<(u64, Waker)>> + '_ {
        #[cfg(not(tera_loom))]
        return self.list.lock();
        #[cfg(tera_loom)]
        return self.list.lock().unwrap();
    }

    /// The LSN up to which the log is durable.
    pub(crate) fn durable(&self) -> u64 {
        self.durable.load(Acquire)
    }

    /// Publish `end` as durable, then wake the tasks waiting for a position up to it.
    pub(crate) fn advance(&self, end: u64) {
        self.durable.store(end, Release);
        self.wake(|lsn| lsn <= end);
    }

    /// Whether the log is durable up to `lsn`: `Pending` registers `cx`'s waker (a task polled
    /// again while it waits keeps one entry); `failed` says whether the log failed, so that
    /// no flush will come, and with what error. It is called under the lock, so the failure
    /// must be recorded before [`DurableWaiters::wake_all`] is called.
    pub(crate) fn poll<E>(
        &self,
        lsn: u64,
        cx: &mut Context<'_>,
        failed: impl FnOnce() -> Option<E>,
    ) -> Poll<Result<(), E>> {
        if self.durable() >= lsn {
            return Poll::Ready(Ok(()));
        }
        let mut list = self.lock();
        if self.durable() >= lsn {
            return Poll::Ready(Ok(()));
        }
        if let Some(e) = failed() {
            return Poll::Ready(Err(e));
        }
        match list.iter_mut().find(|(_, w)| w.will_wake(cx.waker())) {
            Some(entry) => entry.0 = entry.0.min(lsn),
            None => list.push((lsn, cx.waker().clone())),
        }
        Poll::Pending
    }

    /// Wake every waiting task: the log failed, so no flush will come; each sees the failure
    /// when it polls.
    pub(crate) fn wake_all(&self) {
        self.wake(|_| true);
    }

    /// Wake the tasks `due` says are done, after releasing the lock.
    fn wake(&self, due: impl Fn(u64) -> bool) {
        let mut woken = Vec::new();
        self.lock().retain(|(lsn, w)| {
            if due(*lsn) {
                woken.push(w.clone());
                false
            } else {
                true
            }
        });
        for w in woken {
            w.wake();
        }
    }

    /// Tasks waiting now.
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(tera_loom)]
mod loom_models {
    use super::*;
    use loom::sync::atomic::AtomicBool;
    use loom::sync::Arc;
    use std::sync::atomic::Ordering::SeqCst;

    /// A waker that unparks the model thread that polls.
    struct Unpark(loom::thread::Thread);

    impl std::task::Wake for Unpark {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }

    /// Wait, as an async task would, for the log to be durable up to `lsn`: poll, and park
    /// until woken. A wake-up that never comes parks the thread for good.
    fn wait(w: &DurableWaiters, lsn: u64, failed: &AtomicBool) -> Result<(), ()> {
        let waker = Waker::from(std::sync::Arc::new(Unpark(loom::thread::current())));
        let mut cx = Context::from_waker(&waker);
        loop {
            match w.poll(lsn, &mut cx, || failed.load(SeqCst).then_some(())) {
                Poll::Ready(r) => return r,
                Poll::Pending => loom::thread::park(),
            }
        }
    }

    /// A task that waits for LSN 10 while two flushes bring the log to 5, then 10, is woken
    /// wherever the flushes land in its poll. A lost wake-up leaves the task parked for good,
    /// which loom reports as a deadlock.
    #[test]
    fn a_flush_that_reaches_the_position_always_wakes_the_task() {
        loom::model(|| {
            let w = Arc::new(DurableWaiters::new(0));
            let failed = AtomicBool::new(false);
            let flusher = {
                let w = w.clone();
                loom::thread::spawn(move || {
                    w.advance(5);
                    w.advance(10);
                })
            };
            assert_eq!(wait(&w, 10, &failed), Ok(()));
            assert!(w.durable() >= 10);
            flusher.join().unwrap();
        });
    }

    /// A task waiting for a flush that will not come is woken by the log's failure and sees
    /// it, wherever the failure lands in its poll.
    #[test]
    fn the_logs_failure_always_wakes_the_task() {
        loom::model(|| {
            let w = Arc::new(DurableWaiters::new(0));
            let failed = Arc::new(AtomicBool::new(false));
            let failer = {
                let (w, failed) = (w.clone(), failed.clone());
                loom::thread::spawn(move || {
                    failed.store(true, SeqCst);
                    w.wake_all();
                })
            };
            assert_eq!(wait(&w, 10, &failed), Err(()));
            failer.join().unwrap();
        });
    }
}
