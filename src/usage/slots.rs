//! The scrape slots: how many scrapes are in flight at once, shared between namespaces.
//!
//! A namespace holds at most its share of the slots (`--max-concurrent-scrapes-per-namespace`),
//! whatever its pods do: 64 pods that accept and never answer keep that many of their own
//! scrapes waiting, not the other namespaces'. The slots themselves go first come, first
//! served, and a namespace has at most its share of scrapes in line for them, so a scrape
//! waits behind at most one share of each other namespace's scrapes.
//!
//! Two semaphores, both fair (FIFO) and both released by dropping the permit, so a scrape
//! that gives up waiting (its deadline) leaves the line and frees what it held: one per
//! namespace with the share's permits, created when a namespace's first scrape asks and
//! dropped when its last one is done, and one for all the slots.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The slots of a scraper. Cheap to clone: clones share the slots.
#[derive(Clone)]
pub struct Slots {
    all: Arc<Semaphore>,
    total: usize,
    share: usize,
    namespaces: Arc<Mutex<HashMap<String, Share>>>,
}

/// One namespace's share: its permits, and how many of its scrapes hold or wait for one.
struct Share {
    permits: Arc<Semaphore>,
    scrapes: usize,
}

/// A slot, held by one scrape until dropped.
pub struct Slot {
    // Dropped in this order: the slot and the share's permit before the namespace may go.
    _slot: OwnedSemaphorePermit,
    _share: OwnedSemaphorePermit,
    _scrape: Scrape,
}

/// One scrape of a namespace, waiting for a slot or holding one: the namespace's share
/// exists while it has any.
struct Scrape {
    namespaces: Arc<Mutex<HashMap<String, Share>>>,
    namespace: String,
}

impl Slots {
    /// `total` slots (at least 1), of which one namespace holds at most `share` (at least 1,
    /// at most `total`).
    pub fn new(total: usize, share: usize) -> Self {
        let total = total.max(1);
        Self {
            all: Arc::new(Semaphore::new(total)),
            total,
            share: share.clamp(1, total),
            namespaces: Arc::default(),
        }
    }

    /// The slots over all namespaces.
    pub fn total(&self) -> usize {
        self.total
    }

    /// The most slots one namespace holds at once.
    pub fn share(&self) -> usize {
        self.share
    }

    /// Waits for a slot for a scrape of a pod in `namespace`: first for a permit of the
    /// namespace's share, then for one of all the slots. Dropping the future leaves the line.
    pub async fn acquire(&self, namespace: &str) -> Slot {
        let (scrape, permits) = self.join(namespace);
        let share = permits.acquire_owned().await.expect("a share is never closed");
        let slot = self
            .all
            .clone()
            .acquire_owned()
            .await
            .expect("the slots are never closed");
        Slot {
            _slot: slot,
            _share: share,
            _scrape: scrape,
        }
    }

    /// Slots held now, over all namespaces.
    pub fn held(&self) -> usize {
        self.total - self.all.available_permits()
    }

    /// Namespaces with a scrape holding or waiting for a slot now.
    pub fn namespaces(&self) -> usize {
        lock(&self.namespaces).len()
    }

    /// Counts a scrape of `namespace`, creating its share if it is the only one.
    fn join(&self, namespace: &str) -> (Scrape, Arc<Semaphore>) {
        let mut namespaces = lock(&self.namespaces);
        let share = namespaces.entry(namespace.to_string()).or_insert_with(|| Share {
            permits: Arc::new(Semaphore::new(self.share)),
            scrapes: 0,
        });
        share.scrapes += 1;
        let scrape = Scrape {
            namespaces: self.namespaces.clone(),
            namespace: namespace.to_string(),
        };
        (scrape, share.permits.clone())
    }
}

impl Drop for Scrape {
    fn drop(&mut self) {
        let mut namespaces = lock(&self.namespaces);
        if let Some(share) = namespaces.get_mut(&self.namespace) {
            share.scrapes -= 1;
            if share.scrapes == 0 {
                namespaces.remove(&self.namespace);
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Whether `acquire` gets a slot at once (within a few ms of polling).
    async fn at_once(slots: &Slots, namespace: &str) -> Option<Slot> {
        tokio::time::timeout(Duration::from_millis(50), slots.acquire(namespace))
            .await
            .ok()
    }

    #[tokio::test]
    async fn a_namespace_holds_at_most_its_share_and_the_others_keep_the_rest() {
        let slots = Slots::new(8, 3);
        let mut hostile = Vec::new();
        for _ in 0..3 {
            hostile.push(at_once(&slots, "hostile").await.expect("within the share"));
        }
        assert!(
            at_once(&slots, "hostile").await.is_none(),
            "a 4th slot for one namespace"
        );
        let others: Vec<Slot> = futures::future::join_all((0..5).map(|i| {
            let slots = slots.clone();
            async move { at_once(&slots, if i < 3 { "a" } else { "b" }).await }
        }))
        .await
        .into_iter()
        .map(|s| s.expect("the other namespaces get the rest at once"))
        .collect();
        assert_eq!(slots.held(), 8);
        assert!(at_once(&slots, "c").await.is_none(), "more slots than there are");
        drop(others);
        assert_eq!(slots.held(), 3);
        assert!(at_once(&slots, "c").await.is_some());
    }

    #[tokio::test]
    async fn slots_go_first_come_first_served_and_a_namespace_waits_behind_at_most_a_share_of_another() {
        let slots = Slots::new(2, 2);
        let held = [at_once(&slots, "a").await.unwrap(), at_once(&slots, "a").await.unwrap()];
        // `a` asks for 10 more, then `b` for one: only 2 of `a`'s are in line for a slot,
        // the rest wait for `a`'s share.
        let order = Arc::new(Mutex::new(Vec::new()));
        let waiting = |namespace: &'static str| {
            let (slots, order) = (slots.clone(), order.clone());
            tokio::spawn(async move {
                let slot = slots.acquire(namespace).await;
                order.lock().unwrap().push(namespace);
                tokio::time::sleep(Duration::from_millis(5)).await;
                drop(slot);
            })
        };
        let mut tasks: Vec<_> = (0..10).map(|_| waiting("a")).collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        tasks.push(waiting("b"));
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(held);
        for task in tasks {
            task.await.unwrap();
        }
        let order = order.lock().unwrap().clone();
        let b = order.iter().position(|n| *n == "b").unwrap();
        assert!(b <= 2, "b got a slot only after {b} of a's scrapes: {order:?}");
    }

    #[tokio::test]
    async fn a_scrape_that_gives_up_waiting_leaves_the_line_and_a_namespace_goes_with_its_last_scrape() {
        let slots = Slots::new(1, 1);
        let held = at_once(&slots, "a").await.unwrap();
        assert!(at_once(&slots, "b").await.is_none(), "gave up");
        assert!(at_once(&slots, "a").await.is_none(), "gave up");
        assert_eq!(slots.namespaces(), 1, "only `a`, which holds a slot");
        drop(held);
        assert_eq!((slots.namespaces(), slots.held()), (0, 0));
        // Nothing of the scrapes that gave up is left in line.
        assert!(at_once(&slots, "b").await.is_some());
        assert_eq!(slots.namespaces(), 0);
    }

    #[test]
    fn the_share_is_at_least_one_and_at_most_all() {
        assert_eq!((Slots::new(0, 0).total(), Slots::new(0, 0).share()), (1, 1));
        assert_eq!(Slots::new(8, 100).share(), 8);
    }
}
