//! Hashing: [`hash_bytes`], the fixed hash that turns session ids into rate-limit keys, and
//! [`SeededBuildHasher`], the per-map random seed of the keyed maps (so that keys an attacker
//! picks cannot be aimed at one hash bucket).

use std::hash::{BuildHasher, Hasher};

/// FxHash-like hash of bytes with a fixed seed, for turning session ids into
/// the rate limiter's request keys. Not keyed: use it on values the client cannot choose freely (signed/random session ids).
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut h: u64 = 0;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
    }
    mix64(h ^ bytes.len() as u64)
}

/// splitmix64 finaliser: a bijective, well-avalanching mix of 64 bits.
#[inline]
pub fn mix64(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Seeded hasher for `u64` keys in the keyed maps.
#[derive(Clone, Copy, Debug)]
pub struct SeededHasher {
    seed: u64,
    state: u64,
}

impl Hasher for SeededHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.state
    }
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.state = mix64(self.state ^ u64::from(*b) ^ self.seed);
        }
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.state = mix64(self.state ^ i ^ self.seed);
    }
}

/// Builds [`SeededHasher`]s with one random seed per map.
#[derive(Clone, Copy, Debug)]
pub struct SeededBuildHasher {
    seed: u64,
}

impl SeededBuildHasher {
    /// A builder with a fresh random seed (odd, so never zero).
    pub fn random() -> Self {
        SeededBuildHasher {
            seed: rand::random::<u64>() | 1,
        }
    }
}

impl BuildHasher for SeededBuildHasher {
    type Hasher = SeededHasher;
    #[inline]
    fn build_hasher(&self) -> SeededHasher {
        SeededHasher {
            seed: self.seed,
            state: self.seed.rotate_left(17),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_bytes_is_stable_and_spreads() {
        assert_eq!(hash_bytes(b"abc"), hash_bytes(b"abc"));
        assert_ne!(hash_bytes(b"abc"), hash_bytes(b"abd"));
        assert_ne!(hash_bytes(b""), hash_bytes(b"\0"));
        assert_ne!(hash_bytes(b"12345678"), hash_bytes(b"123456789"));
    }

    #[test]
    fn mix64_is_a_bijection_on_samples() {
        let xs: Vec<u64> = (0..1000u64)
            .map(|i| mix64(i.wrapping_mul(0x9e37_79b9)))
            .collect();
        let set: std::collections::HashSet<_> = xs.iter().collect();
        assert_eq!(set.len(), xs.len());
        assert_eq!(mix64(0), 0);
    }

    #[test]
    fn seeded_hashers_depend_on_their_seed() {
        let a = SeededBuildHasher::random();
        assert_eq!(a.hash_one(42u64), a.hash_one(42u64));
        assert_ne!(a.hash_one(42u64), a.hash_one(43u64));
        let b = SeededBuildHasher::random();
        // two random odd seeds collide with probability 2^-63
        assert_ne!(a.hash_one(42u64), b.hash_one(42u64));
    }
}
