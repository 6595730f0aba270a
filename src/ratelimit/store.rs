//! The bounded keyed state behind every limiter: [`CappedStore`] keeps at most `max_keys` GCRA
//! states, evicts the idlest of a few sampled keys when a new key arrives at a full table, and
//! drops idle keys on [`CappedStore::retain_recent`] (see "Bounded memory" in the module docs of
//! [`crate::ratelimit`]); [`SharedStore`] is the handle governor owns.
//!
//! The table is split into shards (a power of two, about four per core), each an
//! [`IndexMap`] behind its own read-write lock, each holding at most its share of the cap. A key
//! already tracked costs a read lock and one atomic compare-and-swap, as with a `DashMap`; a new
//! key takes its shard's write lock. `IndexMap` is there for its O(1) access by position: a full
//! shard samples [`EVICTION_SAMPLES`] random entries and evicts the one with the earliest
//! theoretical arrival time (Redis's approximated LRU, on GCRA state).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed, StateStore};
use indexmap::IndexMap;

use crate::util::hash::{mix64, SeededBuildHasher};

/// Entries a full shard samples to choose the one it evicts.
pub const EVICTION_SAMPLES: usize = 5;

type Table = IndexMap<u64, InMemoryState, SeededBuildHasher>;

#[derive(Debug)]
struct Shard {
    table: RwLock<Table>,
    /// This shard's share of the cap.
    cap: usize,
    /// State of the sampling generator (xorshift64*), advanced under the write lock.
    rng: AtomicU64,
    /// Set when the shard first filled up and sized its index for life at a full table.
    sized: AtomicBool,
}

impl Shard {
    fn read(&self) -> RwLockReadGuard<'_, Table> {
        // The lock guards plain data that a panic cannot leave half-updated: ignore poisoning.
        self.table.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Table> {
        self.table.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// A random index below `len` (`len` > 0).
    fn sample(&self, len: usize) -> usize {
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.store(x, Ordering::Relaxed);
        let r = x.wrapping_mul(0x2545_f491_4f6c_dd1d);
        // Lemire's multiply-shift: uniform enough for sampling, and no division.
        ((u128::from(r) * len as u128) >> 64) as usize
    }
}

/// Keyed GCRA state with a hard cap on the number of keys (see the module docs).
#[derive(Debug)]
pub struct CappedStore {
    shards: Box<[Shard]>,
    /// `shards.len() - 1` (a power of two minus one).
    mask: usize,
    hasher: SeededBuildHasher,
    cap: usize,
    evicted: AtomicU64,
    at_cap: AtomicBool,
}

impl CappedStore {
    /// An empty store holding at most `cap` keys.
    pub fn new(cap: usize) -> Self {
        let cap = cap.max(1);
        let cores = std::thread::available_parallelism().map_or(4, usize::from);
        // About four shards per core, like DashMap, but at least 128 keys a shard: each shard
        // holds its share of the cap, and the secret hash spreads keys evenly only over many keys
        // (a small table is one shard, so it fills exactly).
        let mut n = (cores * 4).next_power_of_two().min(1 << 16);
        while n > 1 && n * 128 > cap {
            n /= 2;
        }
        let hasher = SeededBuildHasher::random();
        let shards = (0..n)
            .map(|i| Shard {
                table: RwLock::new(IndexMap::with_hasher(hasher)),
                cap: cap / n + usize::from(i < cap % n),
                rng: AtomicU64::new(mix64(rand::random::<u64>()) | 1),
                sized: AtomicBool::new(false),
            })
            .collect();
        CappedStore {
            shards,
            mask: n - 1,
            hasher,
            cap,
            evicted: AtomicU64::new(0),
            at_cap: AtomicBool::new(false),
        }
    }

    #[inline]
    fn shard(&self, key: u64) -> &Shard {
        use std::hash::BuildHasher;
        // Bits 40.. of the hash: the table itself uses the low bits (bucket) and the top 7 (tag).
        let h = self.hasher.hash_one(key);
        &self.shards[(h >> 40) as usize & self.mask]
    }

    fn tat(state: &InMemoryState) -> u64 {
        // A read-only look at the theoretical arrival time: the closure refuses to replace.
        match state.measure_and_replace(&NotKeyed::NonKey, Err::<((), Nanos), _>) {
            Err(prev) => prev.map_or(0, u64::from),
            Ok(()) => 0,
        }
    }

    /// How many keys were evicted to make room for new ones since creation (for a counter).
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// True when a shard was full (and evicted) since the last sweep.
    pub fn at_cap(&self) -> bool {
        self.at_cap.load(Ordering::Relaxed)
    }

    /// The total cap.
    pub fn cap(&self) -> usize {
        self.cap
    }

    #[inline]
    fn do_measure_and_replace<T, F, E>(&self, key: &u64, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let shard = self.shard(*key);
        if let Some(v) = shard.read().get(key) {
            return v.measure_and_replace(&NotKeyed::NonKey, f);
        }
        self.insert(shard, *key, f)
    }

    /// A key not tracked yet: takes the shard's write lock, makes room if the shard is full, and
    /// gives the key its own fresh bucket.
    #[inline(never)]
    fn insert<T, F, E>(&self, shard: &Shard, key: u64, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut t = shard.write();
        if let Some(v) = t.get(&key) {
            // Another thread inserted it meanwhile.
            return v.measure_and_replace(&NotKeyed::NonKey, f);
        }
        if t.len() >= shard.cap {
            if !shard.sized.swap(true, Ordering::Relaxed) {
                // From now on every new key evicts one: the hash index fills with tombstones,
                // and hashbrown doubles it once when it cleans them up at more than half load.
                // Doing it now keeps memory flat from the moment the table is full (the entries'
                // extra capacity is reserved but never touched).
                t.reserve(shard.cap);
            }
            self.evict_one(shard, &mut t);
        } else if t.len() == t.capacity() {
            // Grow without overshooting the cap (a plain insert would double the entries).
            let more = t.len().max(16).min(shard.cap - t.len());
            t.reserve_exact(more);
        }
        let (i, _) = t.insert_full(key, InMemoryState::default());
        match t.get_index(i) {
            Some((_, v)) => v.measure_and_replace(&NotKeyed::NonKey, f),
            // insert_full just returned this index.
            None => InMemoryState::default().measure_and_replace(&NotKeyed::NonKey, f),
        }
    }

    /// Evicts, among a few random entries of a full shard, the one whose bucket refills first
    /// (earliest theoretical arrival time): a bucket already full is forgotten at no cost to
    /// anyone, and otherwise the least debt is forgiven, which for keys used once (a spray) is the
    /// least recently used one.
    #[cold]
    fn evict_one(&self, shard: &Shard, t: &mut Table) {
        let len = t.len();
        if len == 0 {
            return;
        }
        let mut victim = shard.sample(len);
        let mut oldest = t.get_index(victim).map_or(u64::MAX, |(_, v)| Self::tat(v));
        for _ in 1..EVICTION_SAMPLES {
            let i = shard.sample(len);
            let tat = t.get_index(i).map_or(u64::MAX, |(_, v)| Self::tat(v));
            if tat < oldest {
                (victim, oldest) = (i, tat);
            }
        }
        t.swap_remove_index(victim);
        self.evicted.fetch_add(1, Ordering::Relaxed);
        if !self.at_cap.load(Ordering::Relaxed) {
            self.at_cap.store(true, Ordering::Relaxed);
        }
    }
}

/// An `Arc` handle on a [`CappedStore`], so that we keep access to it (counters, cap flag) while
/// governor owns the limiter, and so that several limiters (the levels of the address limit) can
/// share one store and one cap.
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
        for shard in self.shards.iter() {
            shard.write().retain(|_, v| Self::tat(v) > drop_below);
        }
        self.at_cap.store(false, Ordering::Relaxed);
    }

    /// Releases table memory when most of it is empty.
    pub fn shrink_to_fit(&self) {
        for shard in self.shards.iter() {
            let mut t = shard.write();
            // Only worth the rehash when most of the table is empty.
            if t.len().saturating_mul(4) < t.capacity() {
                t.shrink_to_fit();
            }
        }
    }

    /// Number of tracked keys (never above the cap).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().len()).sum()
    }

    /// True when no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
