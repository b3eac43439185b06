//! [`DeadLetterQueue`]: a job's dead-lettered work items, as Prodigy's
//! `DLQStorage` and `DeadLetterQueue` keep them (`cook/execution/dlq.rs`,
//! `dlq_reprocessor.rs`).
//!
//! Each item is its own document; the job's index (`{item_count, item_ids,
//! job_id, updated_at}`) summarizes them for readers that want counts
//! without loading items. The items are the truth: every add and remove
//! rebuilds the index from the store's listing in the same call on the
//! blocking pool (so it lands even if the caller's future is dropped), and
//! [`DeadLetterQueue::refresh_index`] rebuilds it on demand.
//!
//! Reprocessing takes the items to run again *out of* the queue, as
//! Prodigy's `reprocess` does: an item is eligible when its
//! `reprocess_eligible` is `true` (unless forced) and the caller's
//! predicate accepts it. A caller that must not lose an item if it crashes
//! before re-running it uses [`DeadLetterQueue::eligible`] and removes each
//! item after its run instead.
//!
//! # Limitations
//!
//! Two processes changing one job's queue at once can leave an index that
//! misses the other's last change (each rebuilds from its own listing);
//! the next change or `refresh_index` repairs it. Prodigy runs a job in one
//! process at a time (its resume lock), which makes this moot.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use serde_json::{Value, json};
use storage_core::{
    DeadLetterItem, DocKey, ItemId, JobId, RepoKey, Scope, Skipped, Storage, StorageExt,
};
use storage_tokio::AsyncStorage;

use crate::error::Result;
use crate::time::rfc3339;

/// The dead-letter queue of one job.
#[derive(Clone, Debug)]
pub struct DeadLetterQueue {
    store: AsyncStorage,
    repo: RepoKey,
    job: JobId,
    capacity: Option<usize>,
    writing: Arc<Mutex<()>>,
}

/// The items of a queue that parse, and the ones skipped, with why.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct DeadLetters {
    /// The items, sorted by item id.
    pub items: Vec<DeadLetterItem>,
    /// Items that are not dead-letter items (not JSON objects, no `item_id`, …).
    pub skipped: Vec<Skipped>,
}

/// Which items to take out of the queue to run again.
pub struct Reprocess {
    select: Box<dyn Fn(&DeadLetterItem) -> bool + Send>,
    force: bool,
}

impl std::fmt::Debug for Reprocess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reprocess")
            .field("force", &self.force)
            .finish_non_exhaustive()
    }
}

impl Reprocess {
    /// Every item whose `reprocess_eligible` is `true`.
    #[must_use]
    pub fn eligible() -> Self {
        Self::matching(|_| true)
    }

    /// The eligible items among `ids` (Prodigy's `reprocess(item_ids)`).
    #[must_use]
    pub fn ids(ids: impl IntoIterator<Item = ItemId>) -> Self {
        let ids: std::collections::BTreeSet<ItemId> = ids.into_iter().collect();
        Self::matching(move |item| ids.contains(item.item_id()))
    }

    /// The eligible items that `select` accepts (Prodigy's filters: by
    /// error type, by date, by signature, …).
    pub fn matching(select: impl Fn(&DeadLetterItem) -> bool + Send + 'static) -> Self {
        Self {
            select: Box::new(select),
            force: false,
        }
    }

    /// Also the items not marked eligible (Prodigy's `--force`).
    #[must_use]
    pub fn force(mut self) -> Self {
        self.force = true;
        self
    }

    fn takes(&self, item: &DeadLetterItem) -> bool {
        (self.force || is_eligible(item)) && (self.select)(item)
    }
}

/// What [`DeadLetterQueue::reprocess`] took out of the queue.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct Reprocessed {
    /// The items removed from the queue, to run again (`item_data` is the work item).
    pub items: Vec<DeadLetterItem>,
    /// Items the predicate accepted that are not eligible, left in the queue.
    pub ineligible: usize,
    /// Items that could not be read, left in the queue.
    pub skipped: Vec<Skipped>,
}

/// Whether an item may be run again without forcing (`reprocess_eligible: true`).
#[must_use]
pub fn is_eligible(item: &DeadLetterItem) -> bool {
    item.json()
        .get("reprocess_eligible")
        .and_then(Value::as_bool)
        == Some(true)
}

fn guard(m: &Mutex<()>) -> std::sync::MutexGuard<'_, ()> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Rebuilds the index of a job's queue from the listing; removes it when
/// the queue is empty, so an emptied queue leaves nothing behind.
fn refresh(s: &dyn Storage, repo: &RepoKey, job: &JobId) -> storage_core::Result<()> {
    let ids: Vec<String> = s
        .list(&Scope::DeadLetters(repo.clone(), job.clone()))?
        .into_iter()
        .filter_map(|k| match k {
            DocKey::DeadLetter { item, .. } => Some(item.as_str().to_owned()),
            _ => None,
        })
        .collect();
    let key = DocKey::DeadLetterIndex {
        repo: repo.clone(),
        job: job.clone(),
    };
    if ids.is_empty() {
        s.delete(&key)?;
        return Ok(());
    }
    let index = json!({
        "item_count": ids.len(),
        "item_ids": ids,
        "job_id": job.as_str(),
        "updated_at": rfc3339(SystemTime::now()),
    });
    s.put(&key, &index)
}

impl DeadLetterQueue {
    /// The queue of `job` in `repo`.
    #[must_use]
    pub fn new(store: AsyncStorage, repo: RepoKey, job: JobId) -> Self {
        Self {
            store,
            repo,
            job,
            capacity: None,
            writing: Arc::new(Mutex::new(())),
        }
    }

    /// Holds at most `max_items` items (Prodigy's `max_items`): an add to a
    /// full queue first evicts the oldest tenth of that capacity (at least
    /// one item), oldest `last_attempt` first, as Prodigy's `evict_oldest`
    /// does. An item without a readable `last_attempt` counts as oldest.
    #[must_use]
    pub fn with_capacity(mut self, max_items: usize) -> Self {
        self.capacity = Some(max_items.max(1));
        self
    }

    /// The jobs of `repo` that have dead letters.
    pub async fn jobs(store: &AsyncStorage, repo: &RepoKey) -> Result<Vec<JobId>> {
        Ok(store.jobs_with_dead_letters(repo).await?)
    }

    /// Adds `item` (replacing an item with its id) and refreshes the index;
    /// a queue [`with_capacity`](Self::with_capacity) evicts first.
    pub async fn add(&self, item: &DeadLetterItem) -> Result<()> {
        self.add_evicting(item).await.map(drop)
    }

    /// [`add`](Self::add), returning the ids evicted to make room, in one
    /// call on the blocking pool (the eviction and the add land together).
    pub async fn add_evicting(&self, item: &DeadLetterItem) -> Result<Vec<ItemId>> {
        let (item, capacity) = (item.clone(), self.capacity);
        self.write(move |s, repo, job| {
            let mut evicted = Vec::new();
            if let Some(max) = capacity {
                let mut items = s.dead_letters_lenient(repo, job)?.0;
                let replaces = items.iter().any(|i| i.item_id() == item.item_id());
                if items.len() >= max && !replaces {
                    let when = |i: &DeadLetterItem| {
                        i.str_field("last_attempt")
                            .and_then(storage_core::parse_rfc3339)
                    };
                    items.sort_by_key(|i| (when(i), i.item_id().clone()));
                    for old in items.iter().take((max / 10).max(1)) {
                        if s.delete_dead_letter(repo, job, old.item_id())? {
                            evicted.push(old.item_id().clone());
                        }
                    }
                }
            }
            s.save_dead_letter(repo, job, &item)?;
            Ok(evicted)
        })
        .await
    }

    /// Removes one item and refreshes the index; `false` if there was none.
    pub async fn remove(&self, item: &ItemId) -> Result<bool> {
        let item = item.clone();
        self.write(move |s, repo, job| s.delete_dead_letter(repo, job, &item))
            .await
    }

    /// Rebuilds the index from the items there are.
    pub async fn refresh_index(&self) -> Result<()> {
        self.write(|_, _, _| Ok(())).await
    }

    /// The index document, as stored; `None` for an empty queue.
    pub async fn index(&self) -> Result<Option<Value>> {
        let key = DocKey::DeadLetterIndex {
            repo: self.repo.clone(),
            job: self.job.clone(),
        };
        Ok(self.store.get(&key).await?)
    }

    /// Every item that parses, and the ones skipped (Prodigy logs and skips
    /// a bad item file; here it is reported).
    pub async fn list(&self) -> Result<DeadLetters> {
        let (items, skipped) = self
            .store
            .dead_letters_lenient(&self.repo, &self.job)
            .await?;
        Ok(DeadLetters { items, skipped })
    }

    /// The items `which` would take, without taking them.
    pub async fn eligible(&self, which: Reprocess) -> Result<Vec<DeadLetterItem>> {
        let all = self.list().await?;
        Ok(all.items.into_iter().filter(|i| which.takes(i)).collect())
    }

    /// Takes the items `which` selects out of the queue and returns them to
    /// be run again (see the module docs for the crash window this has).
    pub async fn reprocess(&self, which: Reprocess) -> Result<Reprocessed> {
        self.write(move |s, repo, job| {
            let (items, skipped) = s.dead_letters_lenient(repo, job)?;
            let mut out = Reprocessed {
                skipped,
                ..Reprocessed::default()
            };
            for item in items {
                if which.takes(&item) {
                    s.delete_dead_letter(repo, job, item.item_id())?;
                    out.items.push(item);
                } else if (which.select)(&item) {
                    out.ineligible += 1;
                }
            }
            Ok(out)
        })
        .await
    }

    /// Removes every item and the index; returns how many documents went.
    pub async fn purge(&self) -> Result<u64> {
        Ok(self
            .store
            .delete_dead_letters(&self.repo, &self.job)
            .await?)
    }

    /// Removes the items whose `last_attempt` is before `cutoff` (Prodigy's
    /// `purge_old_items`); an item without a readable `last_attempt` is
    /// kept. Returns the ids removed.
    pub async fn purge_older_than(&self, cutoff: SystemTime) -> Result<Vec<ItemId>> {
        self.write(move |s, repo, job| {
            let mut removed = Vec::new();
            for item in s.dead_letters_lenient(repo, job)?.0 {
                let last = item
                    .str_field("last_attempt")
                    .and_then(storage_core::parse_rfc3339);
                if last.is_some_and(|t| t < cutoff)
                    && s.delete_dead_letter(repo, job, item.item_id())?
                {
                    removed.push(item.item_id().clone());
                }
            }
            Ok(removed)
        })
        .await
    }

    /// Runs `change` and then the index refresh as one call on the blocking pool.
    async fn write<T: Send + 'static>(
        &self,
        change: impl FnOnce(&dyn Storage, &RepoKey, &JobId) -> storage_core::Result<T> + Send + 'static,
    ) -> Result<T> {
        let (repo, job, writing) = (
            self.repo.clone(),
            self.job.clone(),
            Arc::clone(&self.writing),
        );
        let out = self
            .store
            .run(move |s| {
                let _one_at_a_time = guard(&writing);
                let out = change(s, &repo, &job)?;
                refresh(s, &repo, &job)?;
                Ok::<_, storage_core::Error>(out)
            })
            .await?;
        Ok(out)
    }
}
