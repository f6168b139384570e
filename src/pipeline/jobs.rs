//! Archive work in flight, bounded: at most `archive.concurrency` segments at once, so
//! that memory and open uploads stay bounded however many flows are due. The sweep and
//! the archive stage of `run` both go through it.

use std::future::Future;

use tokio::task::{JoinError, JoinSet};

/// A set of tasks that never holds more than `limit`.
pub(super) struct BoundedJobs<T> {
    set: JoinSet<T>,
    limit: usize,
}

impl<T: Send + 'static> BoundedJobs<T> {
    pub fn new(limit: usize) -> Self {
        BoundedJobs {
            set: JoinSet::new(),
            limit: limit.max(1),
        }
    }

    /// Waits until a task may start, handing each one that finishes meanwhile to
    /// `done`.
    pub async fn wait_for_room(&mut self, done: &mut impl FnMut(Result<T, JoinError>)) {
        while self.set.len() >= self.limit {
            if let Some(finished) = self.set.join_next().await {
                done(finished);
            }
        }
    }

    /// Starts `job`; call [`BoundedJobs::wait_for_room`] first.
    pub fn spawn(&mut self, job: impl Future<Output = T> + Send + 'static) {
        debug_assert!(self.set.len() < self.limit, "spawned without room");
        self.set.spawn(job);
    }

    /// Waits for every task, handing each to `done`.
    pub async fn drain(&mut self, done: &mut impl FnMut(Result<T, JoinError>)) {
        while let Some(finished) = self.set.join_next().await {
            done(finished);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn never_more_than_the_limit_run_and_every_result_is_handed_over() {
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let mut jobs = BoundedJobs::new(3);
        let mut results = Vec::new();
        let mut done = |r: Result<usize, JoinError>| results.push(r.unwrap());
        for i in 0..20 {
            let (running, most) = (running.clone(), most.clone());
            let job = async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                i
            };
            jobs.wait_for_room(&mut done).await;
            jobs.spawn(job);
        }
        jobs.drain(&mut done).await;
        results.sort_unstable();
        assert_eq!(results, (0..20).collect::<Vec<_>>());
        assert!(most.load(Ordering::SeqCst) <= 3);
    }
}
