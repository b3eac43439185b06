//! Event reads and follow as [`Stream`]s, fed from blocking tasks through
//! bounded channels.
//!
//! [`Storage::read_events_from`] pushes records to a visitor; a stream is
//! pulled. The blocking task's visitor sends each record into a channel of
//! fixed capacity and blocks while it is full, so a slow consumer slows the
//! read instead of letting records pile up: memory holds the channel's
//! capacity of records, not the log.
//!
//! A follower also needs a cursor for each record so that it can stop and
//! resume. The trait returns a cursor only at the end of a read pass (after
//! the last whole line), so the task holds each pass's latest record back
//! until the next one arrives: every record but the last of a pass carries
//! the cursor the pass started from (resuming there delivers it again), and
//! the last one carries the cursor just after it ([`Followed::exact`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_core::Stream;
use storage_core::{
    BlockingSection, EventCursor, EventLogSummary, EventRecord, JobId, ReadMode, RepoKey, Result,
    Storage,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::adapter::resume;

/// The first pause after a read pass that found nothing although the store
/// said there might be something (see [`follow_blocking`]).
const FIRST_BACKOFF: Duration = Duration::from_millis(5);

enum ReadMsg {
    Record(EventRecord),
    End(Result<EventLogSummary>),
}

/// One pass over an event log ([`AsyncStorage::read_events`](crate::AsyncStorage::read_events)).
///
/// Yields the records in append order, then ends; a read error is the last
/// item. Dropping it stops the blocking read (see the crate docs).
#[must_use = "the read runs only to fill the channel; drop the stream to stop it"]
pub struct EventStream {
    rx: mpsc::Receiver<ReadMsg>,
    task: Option<JoinHandle<()>>,
    summary: Option<EventLogSummary>,
    done: bool,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("summary", &self.summary)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl EventStream {
    /// The next record, `None` at the end (the same as
    /// [`StreamExt::next`](https://docs.rs/futures/latest/futures/stream/trait.StreamExt.html#method.next),
    /// without the crate).
    pub async fn next(&mut self) -> Option<Result<EventRecord>> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }

    /// What the read found besides its records (torn tails, skipped lines)
    /// and where the next read starts; `None` until the stream has ended
    /// without an error.
    #[must_use]
    pub fn summary(&self) -> Option<&EventLogSummary> {
        self.summary.as_ref()
    }
}

impl Stream for EventStream {
    type Item = Result<EventRecord>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        match ready!(this.rx.poll_recv(cx)) {
            Some(ReadMsg::Record(r)) => Poll::Ready(Some(Ok(r))),
            Some(ReadMsg::End(Ok(summary))) => {
                this.summary = Some(summary);
                this.done = true;
                Poll::Ready(None)
            }
            Some(ReadMsg::End(Err(e))) => {
                this.done = true;
                Poll::Ready(Some(Err(e)))
            }
            None => {
                // The task ended without its last message: it panicked.
                ready!(poll_task(&mut this.task, cx));
                this.done = true;
                Poll::Ready(None)
            }
        }
    }
}

/// A record seen by a follower, with where to resume after it.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Followed {
    /// The record.
    pub record: EventRecord,
    /// Where a follower that has handled this record resumes
    /// ([`AsyncStorage::follow`](crate::AsyncStorage::follow)'s `from`).
    /// When [`exact`](Followed::exact) is `false`, resuming there delivers
    /// this record (and those before it in the same read) again: handle
    /// records idempotently, or store only exact cursors.
    pub cursor: EventCursor,
    /// Whether [`cursor`](Followed::cursor) is just after this record (the
    /// last record of a read pass), rather than where its pass began.
    pub exact: bool,
}

/// An event log followed as it grows ([`AsyncStorage::follow`](crate::AsyncStorage::follow)).
///
/// Never ends by itself: a read or wait error is yielded, and then the
/// stream ends (resume from the last cursor with a new follower). Dropping
/// it stops its blocking task within one wait slice.
#[must_use = "the follower runs only to fill the channel; drop the stream to stop it"]
pub struct FollowStream {
    rx: mpsc::Receiver<Result<Followed>>,
    task: Option<JoinHandle<()>>,
    done: bool,
}

impl std::fmt::Debug for FollowStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FollowStream")
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl FollowStream {
    /// The next record, waiting for one to be appended; `None` only after
    /// an error was yielded.
    pub async fn next(&mut self) -> Option<Result<Followed>> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }
}

impl Stream for FollowStream {
    type Item = Result<Followed>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        match ready!(this.rx.poll_recv(cx)) {
            Some(Ok(f)) => Poll::Ready(Some(Ok(f))),
            Some(Err(e)) => {
                this.done = true;
                Poll::Ready(Some(Err(e)))
            }
            None => {
                ready!(poll_task(&mut this.task, cx));
                this.done = true;
                Poll::Ready(None)
            }
        }
    }
}

/// Waits for a stream's finished task and resumes its panic, if it had one.
fn poll_task(task: &mut Option<JoinHandle<()>>, cx: &mut Context<'_>) -> Poll<()> {
    if let Some(handle) = task.as_mut() {
        let result = ready!(Pin::new(handle).poll(cx));
        *task = None;
        if let Err(e) = result {
            resume(e);
        }
    }
    Poll::Ready(())
}

pub(crate) fn read(
    store: Arc<dyn Storage>,
    capacity: usize,
    repo: RepoKey,
    job: JobId,
    from: EventCursor,
    mode: ReadMode,
) -> EventStream {
    let (tx, rx) = mpsc::channel(capacity);
    let task = tokio::task::spawn_blocking(move || {
        let _may_block = BlockingSection::enter();
        let mut open = true;
        let result = store.read_events_from(&repo, &job, &from, mode, &mut |record| {
            // Once the stream is gone, the rest of the pass is skipped
            // record by record: the visitor cannot stop the read.
            if open && tx.blocking_send(ReadMsg::Record(record)).is_err() {
                open = false;
            }
        });
        if open {
            let _ = tx.blocking_send(ReadMsg::End(result));
        }
    });
    EventStream {
        rx,
        task: Some(task),
        summary: None,
        done: false,
    }
}

pub(crate) fn follow(
    store: Arc<dyn Storage>,
    capacity: usize,
    wait_slice: Duration,
    repo: RepoKey,
    job: JobId,
    from: EventCursor,
) -> FollowStream {
    let (tx, rx) = mpsc::channel(capacity);
    let task = tokio::task::spawn_blocking(move || {
        let _may_block = BlockingSection::enter();
        follow_blocking(&*store, &tx, wait_slice, &repo, &job, from);
    });
    FollowStream {
        rx,
        task: Some(task),
        done: false,
    }
}

/// The follower's loop: read from the cursor, send, wait, again, until the
/// stream is dropped or a call fails.
///
/// `wait_for_events` may say "maybe" without there being a whole new line
/// (a writer is half-way through one, or a store cannot tell): a pass that
/// then finds nothing is followed by a pause that doubles up to the wait
/// slice, so a store that keeps saying "maybe" costs a few reads a second,
/// never a busy loop.
fn follow_blocking(
    store: &dyn Storage,
    tx: &mpsc::Sender<Result<Followed>>,
    wait_slice: Duration,
    repo: &RepoKey,
    job: &JobId,
    mut cursor: EventCursor,
) {
    let mut backoff = Duration::ZERO;
    let mut woken = false;
    loop {
        if tx.is_closed() {
            return;
        }
        let start = cursor.clone();
        let mut held: Option<EventRecord> = None;
        let mut open = true;
        let result = store.read_events_from(repo, job, &start, ReadMode::Lenient, &mut |record| {
            if !open {
                return;
            }
            if let Some(previous) = held.replace(record) {
                let item = Followed {
                    record: previous,
                    cursor: start.clone(),
                    exact: false,
                };
                open = tx.blocking_send(Ok(item)).is_ok();
            }
        });
        if !open {
            return;
        }
        let summary = match result {
            Ok(summary) => summary,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        for skipped in &summary.skipped {
            tracing::warn!(%repo, %job, %skipped, "skipped a corrupt event line while following");
        }
        if let Some(last) = held {
            let item = Followed {
                record: last,
                cursor: summary.next.clone(),
                exact: true,
            };
            if tx.blocking_send(Ok(item)).is_err() {
                return;
            }
        }
        let fruitless = summary.records == 0 && summary.next == start;
        backoff = if woken && fruitless {
            (backoff * 2).clamp(FIRST_BACKOFF, wait_slice.max(FIRST_BACKOFF))
        } else {
            Duration::ZERO
        };
        cursor = summary.next;
        if !backoff.is_zero() {
            std::thread::sleep(backoff);
        }
        loop {
            if tx.is_closed() {
                return;
            }
            match store.wait_for_events(repo, job, &cursor, wait_slice) {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
        woken = true;
    }
}
