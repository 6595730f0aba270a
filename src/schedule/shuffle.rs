//! Keyed shuffle of the pre-queue.
//!
//! Everyone who took a ticket while the queue was in pre-queue (before the window opened) is
//! equal: arriving at 07:45:00.001 instead of 07:59 must not matter, otherwise the fastest bots
//! win. With `prequeue_order = "random"` the proxy maps ticket index `i` (arrival order, 0-based)
//! to a queue position `keyed_permutation(key, n, i)`, where `n` is the number of tickets issued
//! before opening. The permutation is:
//!
//! * a bijection on `[0, n)` — nobody is lost, nobody is duplicated;
//! * stateless — any worker with the key computes any position in O(1), no shuffled array;
//! * unpredictable without the key — a 6-round Feistel network on `2·h` bits (the smallest even
//!   width covering `n`) whose round function is SipHash-2-4 keyed with a per-round 128-bit
//!   subkey, truncated to `h` bits; subkeys are HMAC-SHA256(key, label ‖ round ‖ n ‖ h), so
//!   different `n` give unrelated permutations. *Cycle walking* (re-encrypt until the value
//!   falls in `[0, n)`; the domain is < 4·n) needs fewer than 4 steps on average;
//! * invertible ([`KeyedPermutation::invert`]: position -> ticket index) at the same cost.

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::Sha256;

const ROUNDS: u8 = 6;

/// A keyed pseudo-random permutation of `[0, n)`; build once per (key, n) and reuse.
#[derive(Clone)]
pub struct KeyedPermutation {
    round_keys: [(u64, u64); ROUNDS as usize],
    n: u64,
    half_bits: u32,
    mask: u64,
}

impl std::fmt::Debug for KeyedPermutation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedPermutation")
            .field("n", &self.n)
            .field("half_bits", &self.half_bits)
            .finish_non_exhaustive()
    }
}

impl KeyedPermutation {
    /// Permutation of `[0, n)` selected by `key` (32 secret random bytes, e.g. drawn when the
    /// window opens).
    pub fn new(key: &[u8; 32], n: u64) -> Self {
        // HMAC pads keys shorter than the block with zeros, so this is HMAC with `key`; using a
        // full block makes the constructor infallible.
        let mut block = [0u8; 64];
        block[..32].copy_from_slice(key);
        let mac = <Hmac<Sha256> as KeyInit>::new(&block.into());
        let bits = if n <= 1 {
            0
        } else {
            64 - (n - 1).leading_zeros()
        };
        let half_bits = bits.div_ceil(2).max(1);
        let mask = if half_bits >= 64 {
            u64::MAX
        } else {
            (1u64 << half_bits) - 1
        };
        let mut round_keys = [(0u64, 0u64); ROUNDS as usize];
        for (r, rk) in (0u8..).zip(round_keys.iter_mut()) {
            let mut m = mac.clone();
            m.update(b"anticamera/prequeue-feistel/v1");
            m.update(&[r, half_bits as u8]);
            m.update(&n.to_le_bytes());
            let out = m.finalize().into_bytes();
            let word = |i: usize| {
                let mut w = [0u8; 8];
                w.copy_from_slice(&out[i..i + 8]);
                u64::from_le_bytes(w)
            };
            *rk = (word(0), word(8));
        }
        Self {
            round_keys,
            n,
            half_bits,
            mask,
        }
    }

    /// Size of the permuted range.
    pub fn len(&self) -> u64 {
        self.n
    }

    /// Whether the range is empty (`n == 0`).
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    fn round(&self, r: u8, x: u64) -> u64 {
        let (k0, k1) = self.round_keys[usize::from(r) % self.round_keys.len()];
        siphash24(k0, k1, x) & self.mask
    }

    fn encrypt(&self, x: u64) -> u64 {
        let (mut l, mut r) = (x >> self.half_bits, x & self.mask);
        for i in 0..ROUNDS {
            (l, r) = (r, l ^ self.round(i, r));
        }
        (l << self.half_bits) | r
    }

    fn decrypt(&self, y: u64) -> u64 {
        let (mut l, mut r) = (y >> self.half_bits, y & self.mask);
        for i in (0..ROUNDS).rev() {
            (l, r) = (r ^ self.round(i, l), l);
        }
        (l << self.half_bits) | r
    }

    /// Position of ticket `i`. For `i >= n` (not in the range) returns `i` unchanged.
    pub fn apply(&self, i: u64) -> u64 {
        if i >= self.n || self.n == 1 {
            return i;
        }
        let mut y = self.encrypt(i);
        while y >= self.n {
            y = self.encrypt(y);
        }
        y
    }

    /// Ticket at position `p` (inverse of [`KeyedPermutation::apply`]). For `p >= n` returns `p`.
    pub fn invert(&self, p: u64) -> u64 {
        if p >= self.n || self.n == 1 {
            return p;
        }
        let mut x = self.decrypt(p);
        while x >= self.n {
            x = self.decrypt(x);
        }
        x
    }
}

/// SipHash-2-4 of the 8 little-endian bytes of `m`.
fn siphash24(k0: u64, k1: u64, m: u64) -> u64 {
    let mut v = [
        k0 ^ 0x736f_6d65_7073_6575,
        k1 ^ 0x646f_7261_6e64_6f6d,
        k0 ^ 0x6c79_6765_6e65_7261,
        k1 ^ 0x7465_6462_7974_6573,
    ];
    fn sip_round(v: &mut [u64; 4]) {
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13) ^ v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16) ^ v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21) ^ v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17) ^ v[2];
        v[2] = v[2].rotate_left(32);
    }
    for block in [m, 8u64 << 56] {
        v[3] ^= block;
        sip_round(&mut v);
        sip_round(&mut v);
        v[0] ^= block;
    }
    v[2] ^= 0xff;
    for _ in 0..4 {
        sip_round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

/// Queue position of ticket `i` among `n` pre-queue tickets, shuffled by `key`: a bijection on
/// `[0, n)` (see [`KeyedPermutation`]; build one to amortise the key setup over many calls).
pub fn keyed_permutation(key: &[u8; 32], n: u64, i: u64) -> u64 {
    KeyedPermutation::new(key, n).apply(i)
}

/// Inverse of [`keyed_permutation`]: which ticket holds position `p`.
pub fn keyed_permutation_inverse(key: &[u8; 32], n: u64, p: u64) -> u64 {
    KeyedPermutation::new(key, n).invert(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: [u8; 32] = [7; 32];
    const K2: [u8; 32] = {
        let mut k = [7; 32];
        k[31] = 8;
        k
    };

    fn check_bijection(key: &[u8; 32], n: u64) -> Vec<u64> {
        let p = KeyedPermutation::new(key, n);
        let mut seen = vec![false; n as usize];
        let mut out = Vec::with_capacity(n as usize);
        for i in 0..n {
            let y = p.apply(i);
            assert!(y < n, "n={n} i={i} -> {y} out of range");
            assert!(!seen[y as usize], "n={n}: position {y} given twice");
            seen[y as usize] = true;
            assert_eq!(p.invert(y), i, "n={n}: inverse broken at {i}");
            out.push(y);
        }
        out
    }

    #[test]
    fn is_a_permutation_for_small_and_odd_sizes() {
        for n in [1u64, 2, 3, 4, 5, 7, 1000, 10007] {
            check_bijection(&K1, n);
        }
        assert_eq!(keyed_permutation(&K1, 1, 0), 0);
        assert_eq!(keyed_permutation(&K1, 0, 5), 5);
        assert_eq!(keyed_permutation(&K1, 10, 12), 12);
        let y = keyed_permutation(&K1, 10007, 42);
        assert_eq!(keyed_permutation_inverse(&K1, 10007, y), 42);
    }

    #[test]
    #[allow(deprecated)]
    fn siphash_matches_std_reference() {
        use std::hash::Hasher;
        for (k0, k1, m) in [
            (
                0x0706050403020100u64,
                0x0f0e0d0c0b0a0908u64,
                0x0706050403020100u64,
            ),
            (1, 2, 3),
            (u64::MAX, 0, 0xdead_beef),
        ] {
            let mut h = std::hash::SipHasher::new_with_keys(k0, k1);
            h.write(&m.to_le_bytes());
            assert_eq!(siphash24(k0, k1, m), h.finish());
        }
        // Published test vector: key 00..0f, message 00..07.
        assert_eq!(
            siphash24(0x0706050403020100, 0x0f0e0d0c0b0a0908, 0x0706050403020100),
            0x93f5_f579_9a93_2462
        );
    }

    #[test]
    fn huge_n_round_trips() {
        for n in [u64::MAX, (1u64 << 63) + 3, 1u64 << 40] {
            let p = KeyedPermutation::new(&K1, n);
            for i in [0, 1, 12345, n / 2, n - 1] {
                let y = p.apply(i);
                assert!(y < n);
                assert_eq!(p.invert(y), i);
            }
        }
    }

    fn spearman(pos: &[u64]) -> f64 {
        // Both arrival order and positions are permutations of 0..n: ranks are the values.
        let n = pos.len() as f64;
        let d2: f64 = pos
            .iter()
            .enumerate()
            .map(|(i, &p)| {
                let d = i as f64 - p as f64;
                d * d
            })
            .sum();
        1.0 - 6.0 * d2 / (n * (n * n - 1.0))
    }

    #[test]
    fn uncorrelated_with_arrival_and_key_dependent() {
        let a = check_bijection(&K1, 10_000);
        let b = check_bijection(&K2, 10_000);
        let rho_a = spearman(&a);
        let rho_b = spearman(&b);
        assert!(rho_a.abs() < 0.1, "rho = {rho_a}");
        assert!(rho_b.abs() < 0.1, "rho = {rho_b}");
        // sanity of the statistic itself
        let identity: Vec<u64> = (0..10_000).collect();
        assert!((spearman(&identity) - 1.0).abs() < 1e-9);
        // different keys: different orders, and not merely shifted
        let same = a.iter().zip(&b).filter(|(x, y)| x == y).count();
        assert!(same < 20, "{same} equal positions between two keys");
        // the first 10 arrivals are spread out, not clustered at the front
        let front = a[..100].iter().filter(|&&p| p < 1000).count();
        assert!(
            front < 30,
            "{front} of the first 100 arrivals in the first 10%"
        );
    }
}
