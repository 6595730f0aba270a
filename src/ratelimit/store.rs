//! The bounded keyed state behind every limiter: [`CappedStore`] keeps at most `max_keys` GCRA
//! states, sends keys beyond the cap to one shared overflow bucket, and drops idle keys on
//! [`CappedStore::retain_recent`] (see "Bounded memory" in the module docs of
//! [`crate::ratelimit`]); [`SharedStore`] is the handle governor owns.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed, StateStore};

use crate::util::hash::SeededBuildHasher;

/// Keyed GCRA state with a hard cap on the number of keys (see the module docs).
#[derive(Debug)]
pub struct CappedStore {
    map: DashMap<u64, InMemoryState, SeededBuildHasher>,
    overflow: InMemoryState,
    len: AtomicUsize,
    cap: usize,
    overflowed: AtomicU64,
    at_cap: AtomicBool,
}

impl CappedStore {
    /// An empty store holding at most `cap` keys.
    pub fn new(cap: usize) -> Self {
        CappedStore {
            map: DashMap::with_hasher(SeededBuildHasher::random()),
            overflow: InMemoryState::default(),
            len: AtomicUsize::new(0),
            cap: cap.max(1),
            overflowed: AtomicU64::new(0),
            at_cap: AtomicBool::new(false),
        }
    }

    fn tat(state: &InMemoryState) -> u64 {
        // A read-only look at the theoretical arrival time: the closure refuses to replace.
        match state.measure_and_replace(&NotKeyed::NonKey, Err::<((), Nanos), _>) {
            Err(prev) => prev.map_or(0, u64::from),
            Ok(()) => 0,
        }
    }
}

impl CappedStore {
    #[cold]
    fn overflow<T, F, E>(&self, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        self.at_cap.store(true, Ordering::Relaxed);
        self.overflowed.fetch_add(1, Ordering::Relaxed);
        self.overflow.measure_and_replace(&NotKeyed::NonKey, f)
    }

    /// How many checks used the shared overflow bucket since creation (for a counter).
    pub fn overflowed(&self) -> u64 {
        self.overflowed.load(Ordering::Relaxed)
    }

    /// True when the cap was hit since the last sweep.
    pub fn at_cap(&self) -> bool {
        self.at_cap.load(Ordering::Relaxed)
    }

    fn do_measure_and_replace<T, F, E>(&self, key: &u64, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        if let Some(v) = self.map.get(key) {
            return v.measure_and_replace(&NotKeyed::NonKey, f);
        }
        // Reserve a slot first so that concurrent inserts can never exceed the cap.
        if self.len.load(Ordering::Relaxed) >= self.cap {
            return self.overflow(f);
        }
        if self.len.fetch_add(1, Ordering::AcqRel) >= self.cap {
            self.len.fetch_sub(1, Ordering::AcqRel);
            return self.overflow(f);
        }
        match self.map.entry(*key) {
            Entry::Occupied(e) => {
                self.len.fetch_sub(1, Ordering::AcqRel);
                e.get().measure_and_replace(&NotKeyed::NonKey, f)
            }
            Entry::Vacant(v) => {
                let r = v.insert(InMemoryState::default());
                r.measure_and_replace(&NotKeyed::NonKey, f)
            }
        }
    }
}

/// An `Arc` handle on a [`CappedStore`], so that we keep access to it (counters, cap flag) while
/// governor owns the limiter.
#[derive(Debug, Clone)]
pub struct SharedStore(pub Arc<CappedStore>);

impl StateStore for SharedStore {
    type Key = u64;

    #[inline]
    fn measure_and_replace<T, F, E>(&self, key: &u64, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        self.0.do_measure_and_replace(key, f)
    }
}

impl ShrinkableKeyedStateStore<u64> for SharedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        self.0.retain_recent(drop_below)
    }
    fn shrink_to_fit(&self) {
        self.0.shrink_to_fit()
    }
    fn len(&self) -> usize {
        self.0.len()
    }
    fn is_empty(&self) -> bool {
        self.0.len() == 0
    }
}

impl CappedStore {
    /// Drops keys whose theoretical arrival time is at or before `drop_below` (nanoseconds since
    /// the limiter's start): their bucket is full, so forgetting them changes nothing.
    pub fn retain_recent(&self, drop_below: Nanos) {
        let drop_below = u64::from(drop_below);
        let mut removed = 0usize;
        self.map.retain(|_, v| {
            let keep = Self::tat(v) > drop_below;
            removed += usize::from(!keep);
            keep
        });
        self.len.fetch_sub(removed, Ordering::AcqRel);
        self.at_cap.store(false, Ordering::Relaxed);
    }

    /// Releases table memory when most of it is empty.
    pub fn shrink_to_fit(&self) {
        // Only worth the rehash when most of the table is empty.
        if self.map.len().saturating_mul(4) < self.map.capacity() {
            self.map.shrink_to_fit();
        }
    }

    /// Number of tracked keys (never above the cap).
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed).min(self.cap)
    }

    /// True when no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
