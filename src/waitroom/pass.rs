//! Signed waiting-room tokens ("tickets" and "passes") carried in a cookie.
//!
//! A waiting visitor costs the server no memory: everything needed to place
//! them in the queue (gate, ticket number, visitor id) lives in a token signed
//! with HMAC-SHA256 under a [`Keyring`].
//!
//! # Wire format (version 1)
//!
//! A fixed 69-byte record, base64url-encoded without padding (92 characters,
//! cookie-safe):
//!
//! | offset | size | field                                        |
//! |-------:|-----:|----------------------------------------------|
//! | 0      | 1    | format version (`1`)                         |
//! | 1      | 1    | key id (`kid`) used for the MAC              |
//! | 2      | 1    | kind: `1` = ticket, `2` = pass               |
//! | 3      | 2    | gate index (big endian)                      |
//! | 5      | 8    | ticket number                                |
//! | 13     | 16   | visitor id                                   |
//! | 29     | 8    | issued at, ms since the UNIX epoch           |
//! | 37     | 8    | expires at, ms since the UNIX epoch          |
//! | 45     | 4    | slot index (passes; `0` in tickets)          |
//! | 49     | 4    | client binding hash (passes; `0` in tickets) |
//! | 53     | 16   | HMAC-SHA256 over bytes `0..53`, truncated    |
//!
//! The MAC is truncated to its first 16 bytes (128 bits): forging a token
//! still takes ~2^128 online guesses, and the cookie stays short. The
//! comparison is constant-time (`Mac::verify_truncated_left`).
//!
//! Secrets must be dedicated to this use (they are not domain-separated from
//! other HMAC uses).

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Format version written in byte 0 of every token.
pub const TOKEN_VERSION: u8 = 1;
/// Length of the signed body (everything but the MAC).
const BODY_LEN: usize = 53;
/// Length of the truncated MAC.
pub const MAC_LEN: usize = 16;
/// Length of the whole binary token.
pub const TOKEN_LEN: usize = BODY_LEN + MAC_LEN;
/// Length of the encoded (base64url, no padding) token string.
pub const ENCODED_LEN: usize = (TOKEN_LEN * 4).div_ceil(3);
/// Minimum secret length accepted by [`Keyring`].
pub const MIN_SECRET_LEN: usize = 32;

/// Errors building a [`Keyring`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// A secret is shorter than [`MIN_SECRET_LEN`] bytes.
    #[error("secret for key id {kid} is {len} bytes; at least {MIN_SECRET_LEN} are required")]
    TooShort {
        /// The key id.
        kid: u8,
        /// The secret's length.
        len: usize,
    },
    /// The same key id appears twice.
    #[error("key id {0} is configured twice")]
    Duplicate(u8),
    /// The current key id has no secret.
    #[error("current key id {0} has no secret")]
    MissingCurrent(u8),
}

/// The set of HMAC keys: tokens are signed with the current key and verified
/// with any configured key, so keys can be rotated without logging everyone
/// out (add the new key, make it current, drop the old one after the longest
/// token lifetime).
#[derive(Clone)]
pub struct Keyring {
    current: u8,
    /// Pre-keyed HMAC states (cloned per call; no re-keying on the hot path).
    keys: Vec<(u8, HmacSha256)>,
    /// Keys a reload removed: they still verify tokens issued before the reload, and only
    /// tokens that expire at or before the instant kept with them (ms since the epoch), so no
    /// token signed with a retired key outlives its natural life.
    retired: Vec<(u8, HmacSha256, u64)>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kids: Vec<u8> = self.keys.iter().map(|(k, _)| *k).collect();
        let retired: Vec<u8> = self.retired.iter().map(|(k, _, _)| *k).collect();
        f.debug_struct("Keyring")
            .field("current", &self.current)
            .field("kids", &kids)
            .field("retired", &retired)
            .finish_non_exhaustive()
    }
}

impl Keyring {
    /// Builds a keyring from `(kid, secret)` pairs; `current` signs new tokens.
    pub fn new<I, S>(current: u8, keys: I) -> Result<Self, KeyError>
    where
        I: IntoIterator<Item = (u8, S)>,
        S: AsRef<[u8]>,
    {
        let mut out: Vec<(u8, HmacSha256)> = Vec::new();
        for (kid, secret) in keys {
            let secret = secret.as_ref();
            if secret.len() < MIN_SECRET_LEN {
                return Err(KeyError::TooShort {
                    kid,
                    len: secret.len(),
                });
            }
            if out.iter().any(|(k, _)| *k == kid) {
                return Err(KeyError::Duplicate(kid));
            }
            // HMAC accepts keys of any length; this cannot fail.
            let Ok(mac) = HmacSha256::new_from_slice(secret) else {
                return Err(KeyError::TooShort {
                    kid,
                    len: secret.len(),
                });
            };
            out.push((kid, mac));
        }
        if !out.iter().any(|(k, _)| *k == current) {
            return Err(KeyError::MissingCurrent(current));
        }
        // Current key first: the common case is found by the first compare.
        out.sort_by_key(|(k, _)| u8::from(*k != current));
        Ok(Self {
            current,
            keys: out,
            retired: Vec::new(),
        })
    }

    /// A keyring with one random 32-byte key (tokens do not survive a restart;
    /// for development or when no secret is configured).
    pub fn generate(kid: u8) -> Self {
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        let mac = match HmacSha256::new_from_slice(&secret) {
            Ok(m) => m,
            // Unreachable: HMAC takes keys of any length.
            Err(_) => HmacSha256::new(&Default::default()),
        };
        Self {
            current: kid,
            keys: vec![(kid, mac)],
            retired: Vec::new(),
        }
    }

    /// The key id new tokens are signed with.
    pub fn current_kid(&self) -> u8 {
        self.current
    }

    /// The configured key ids (current first).
    pub fn kids(&self) -> impl Iterator<Item = u8> + '_ {
        self.keys.iter().map(|(k, _)| *k)
    }

    /// This keyring, also verifying the keys of `previous` that it no longer has (a key
    /// rotation by reload): they verify tokens expiring at or before `until_ms` (the longest a
    /// token issued until now can live), so passes and tickets already handed out stay valid
    /// until they expire, and nothing new is accepted under a removed key after that.
    /// Retired keys whose bound has passed (`until <= now_ms`) are dropped.
    pub fn retaining(mut self, previous: &Keyring, now_ms: u64, until_ms: u64) -> Keyring {
        let still = |kid: u8, ring: &Keyring| ring.keys.iter().any(|(k, _)| *k == kid);
        for (kid, mac) in &previous.keys {
            if !still(*kid, &self) {
                self.retired.push((*kid, mac.clone(), until_ms));
            }
        }
        for (kid, mac, until) in &previous.retired {
            if *until > now_ms
                && !still(*kid, &self)
                && !self.retired.iter().any(|(k, _, _)| k == kid)
            {
                self.retired.push((*kid, mac.clone(), *until));
            }
        }
        self
    }

    /// The key ids kept only to verify tokens issued before a rotation.
    #[cfg(test)]
    pub fn retired_kids(&self) -> impl Iterator<Item = u8> + '_ {
        self.retired.iter().map(|(k, _, _)| *k)
    }

    /// Key ids whose secret differs between `previous` and this keyring (a fingerprint: the
    /// key's MAC of a fixed text, so no secret is kept or compared in the clear). Reusing an id
    /// for a new secret would void at once every token signed with the old one.
    pub fn changed_secrets(&self, previous: &Keyring) -> Vec<u8> {
        let print = |mac: &HmacSha256| {
            let mut m = mac.clone();
            m.update(b"anticamera key fingerprint");
            m.finalize().into_bytes()
        };
        self.keys
            .iter()
            .filter(|(kid, mac)| {
                previous
                    .keys
                    .iter()
                    .any(|(k, old)| k == kid && print(old) != print(mac))
            })
            .map(|(kid, _)| *kid)
            .collect()
    }

    /// The key for `kid`, and for a retired key the latest expiry it may vouch for.
    #[inline]
    fn key(&self, kid: u8) -> Option<(&HmacSha256, Option<u64>)> {
        if let Some((_, m)) = self.keys.iter().find(|(k, _)| *k == kid) {
            return Some((m, None));
        }
        self.retired
            .iter()
            .find(|(k, _, _)| *k == kid)
            .map(|(_, m, until)| (m, Some(*until)))
    }

    #[inline]
    fn current_key(&self) -> &HmacSha256 {
        // `new` guarantees the current key is first.
        &self.keys[0].1
    }
}

/// What a token entitles its holder to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A place in the queue (waiting).
    Ticket,
    /// An admitted session holding a slot.
    Pass,
}

impl Kind {
    fn to_byte(self) -> u8 {
        match self {
            Kind::Ticket => 1,
            Kind::Pass => 2,
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Kind::Ticket),
            2 => Some(Kind::Pass),
            _ => None,
        }
    }
}

/// A random per-visitor identifier (128 bits from a CSPRNG).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct VisitorId(pub [u8; 16]);

impl VisitorId {
    /// A fresh random id (thread-local ChaCha CSPRNG seeded from the OS).
    pub fn random() -> Self {
        let mut b = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut b);
        Self(b)
    }

    /// The low 64 bits (first 8 bytes, little endian), as stored in a slot.
    #[inline]
    pub fn low64(&self) -> u64 {
        let mut w = [0u8; 8];
        w.copy_from_slice(&self.0[..8]);
        u64::from_le_bytes(w)
    }
}

impl fmt::Debug for VisitorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only a prefix: enough to correlate logs, not to impersonate.
        write!(f, "VisitorId({:016x}…)", self.low64())
    }
}

/// A decoded, verified (or to-be-signed) token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    /// Ticket (waiting) or pass (admitted).
    pub kind: Kind,
    /// Gate index (the engine maps gate names to indices).
    pub gate: u16,
    /// Ticket number taken on arrival.
    pub ticket: u64,
    /// Random visitor id.
    pub visitor: VisitorId,
    /// When the token was issued, ms since the UNIX epoch.
    pub issued_at_ms: u64,
    /// When the token stops being valid, ms since the UNIX epoch.
    pub expires_at_ms: u64,
    /// Slot index in the gate's slot table (passes only; 0 for tickets).
    pub slot: u32,
    /// Hash of client properties computed by the proxy (passes only).
    pub binding: u32,
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PassError {
    /// Not a token of ours (wrong length, bad base64, unknown version/kind).
    #[error("malformed token")]
    Malformed,
    /// Signed with a key id that is not configured (any more).
    #[error("token signed with an unknown key")]
    UnknownKey,
    /// The MAC does not match (tampered or forged).
    #[error("bad token signature")]
    BadSignature,
    /// Valid but past its expiry.
    #[error("token expired")]
    Expired,
    /// Valid but a ticket where a pass was expected or vice versa.
    #[error("wrong token kind")]
    WrongKind,
    /// Valid but for another gate.
    #[error("token for another gate")]
    WrongGate,
}

impl PassError {
    /// Stable short label for metrics (`reason` label of refusal counters).
    pub fn reason(&self) -> &'static str {
        match self {
            PassError::Malformed => "malformed",
            PassError::UnknownKey => "unknown_key",
            PassError::BadSignature => "bad_signature",
            PassError::Expired => "expired",
            PassError::WrongKind => "wrong_kind",
            PassError::WrongGate => "wrong_gate",
        }
    }
}

impl Token {
    /// A new waiting ticket for `visitor` valid for `ttl_ms`.
    pub fn ticket(gate: u16, ticket: u64, visitor: VisitorId, now_ms: u64, ttl_ms: u64) -> Self {
        Self {
            kind: Kind::Ticket,
            gate,
            ticket,
            visitor,
            issued_at_ms: now_ms,
            expires_at_ms: now_ms.saturating_add(ttl_ms),
            slot: 0,
            binding: 0,
        }
    }

    /// A pass (admitted) derived from a ticket, bound to `slot` and `binding`.
    pub fn pass(
        gate: u16,
        ticket: u64,
        visitor: VisitorId,
        slot: u32,
        binding: u32,
        now_ms: u64,
        ttl_ms: u64,
    ) -> Self {
        Self {
            kind: Kind::Pass,
            gate,
            ticket,
            visitor,
            issued_at_ms: now_ms,
            expires_at_ms: now_ms.saturating_add(ttl_ms),
            slot,
            binding,
        }
    }

    fn body(&self, kid: u8) -> [u8; BODY_LEN] {
        let mut b = [0u8; BODY_LEN];
        b[0] = TOKEN_VERSION;
        b[1] = kid;
        b[2] = self.kind.to_byte();
        b[3..5].copy_from_slice(&self.gate.to_be_bytes());
        b[5..13].copy_from_slice(&self.ticket.to_be_bytes());
        b[13..29].copy_from_slice(&self.visitor.0);
        b[29..37].copy_from_slice(&self.issued_at_ms.to_be_bytes());
        b[37..45].copy_from_slice(&self.expires_at_ms.to_be_bytes());
        b[45..49].copy_from_slice(&self.slot.to_be_bytes());
        b[49..53].copy_from_slice(&self.binding.to_be_bytes());
        b
    }

    /// Signs with the keyring's current key and returns the cookie-safe string.
    pub fn encode(&self, keys: &Keyring) -> String {
        let mut out = String::with_capacity(ENCODED_LEN);
        self.encode_into(keys, &mut out);
        out
    }

    /// Like [`Token::encode`] but appends to `out` (reuse a buffer).
    pub fn encode_into(&self, keys: &Keyring, out: &mut String) {
        let mut raw = [0u8; TOKEN_LEN];
        let body = self.body(keys.current);
        raw[..BODY_LEN].copy_from_slice(&body);
        let mut mac = keys.current_key().clone();
        mac.update(&body);
        let tag = mac.finalize().into_bytes();
        raw[BODY_LEN..].copy_from_slice(&tag[..MAC_LEN]);
        URL_SAFE_NO_PAD.encode_string(raw, out);
    }

    /// Verifies and decodes a token string; refuses expired tokens
    /// (`expires_at_ms <= now_ms`). Never panics and never allocates.
    pub fn decode(s: &str, keys: &Keyring, now_ms: u64) -> Result<Token, PassError> {
        let s = s.as_bytes();
        if s.len() != ENCODED_LEN {
            return Err(PassError::Malformed);
        }
        let mut raw = [0u8; TOKEN_LEN];
        match URL_SAFE_NO_PAD.decode_slice(s, &mut raw) {
            Ok(TOKEN_LEN) => {}
            _ => return Err(PassError::Malformed),
        }
        if raw[0] != TOKEN_VERSION {
            return Err(PassError::Malformed);
        }
        let (key, vouches_until) = keys.key(raw[1]).ok_or(PassError::UnknownKey)?;
        let mut mac = key.clone();
        mac.update(&raw[..BODY_LEN]);
        mac.verify_truncated_left(&raw[BODY_LEN..])
            .map_err(|_| PassError::BadSignature)?;
        let kind = Kind::from_byte(raw[2]).ok_or(PassError::Malformed)?;
        let tok = Token {
            kind,
            gate: u16::from_be_bytes([raw[3], raw[4]]),
            ticket: be_u64(&raw[5..13]),
            visitor: VisitorId(be_16(&raw[13..29])),
            issued_at_ms: be_u64(&raw[29..37]),
            expires_at_ms: be_u64(&raw[37..45]),
            slot: be_u32(&raw[45..49]),
            binding: be_u32(&raw[49..53]),
        };
        if tok.expires_at_ms <= now_ms {
            return Err(PassError::Expired);
        }
        if vouches_until.is_some_and(|until| tok.expires_at_ms > until) {
            // Signed with a retired key but claiming a life longer than any token issued
            // before the rotation: not one of ours.
            return Err(PassError::UnknownKey);
        }
        Ok(tok)
    }

    /// [`Token::decode`] plus checks of the expected kind and gate.
    pub fn decode_as(
        s: &str,
        keys: &Keyring,
        now_ms: u64,
        kind: Kind,
        gate: u16,
    ) -> Result<Token, PassError> {
        let tok = Self::decode(s, keys, now_ms)?;
        if tok.kind != kind {
            return Err(PassError::WrongKind);
        }
        if tok.gate != gate {
            return Err(PassError::WrongGate);
        }
        Ok(tok)
    }
}

#[inline]
fn be_u64(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[..8]);
    u64::from_be_bytes(w)
}

#[inline]
fn be_u32(b: &[u8]) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[..4]);
    u32::from_be_bytes(w)
}

#[inline]
fn be_16(b: &[u8]) -> [u8; 16] {
    let mut w = [0u8; 16];
    w.copy_from_slice(&b[..16]);
    w
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    const NOW: u64 = 1_700_000_000_000;

    fn ring() -> Keyring {
        Keyring::new(1, [(1u8, [7u8; 32])]).unwrap()
    }

    fn sample_pass() -> Token {
        Token::pass(3, 42, VisitorId([9; 16]), 17, 0xdead_beef, NOW, 60_000)
    }

    #[test]
    fn roundtrip_and_length() {
        let k = ring();
        let t = sample_pass();
        let s = t.encode(&k);
        assert_eq!(s.len(), ENCODED_LEN);
        assert_eq!(ENCODED_LEN, 92);
        assert!(s
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert_eq!(Token::decode(&s, &k, NOW).unwrap(), t);
        let tk = Token::ticket(1, 5, VisitorId::random(), NOW, 1000);
        assert_eq!(Token::decode(&tk.encode(&k), &k, NOW).unwrap(), tk);
    }

    #[test]
    fn tampered_token_refused() {
        let k = ring();
        let s = sample_pass().encode(&k);
        let mut raw = URL_SAFE_NO_PAD.decode(&s).unwrap();
        // Flip one bit in the ticket number: signature must fail.
        raw[10] ^= 1;
        let bad = URL_SAFE_NO_PAD.encode(&raw);
        assert_eq!(Token::decode(&bad, &k, NOW), Err(PassError::BadSignature));
        // Flip a bit in the MAC itself.
        let mut raw2 = URL_SAFE_NO_PAD.decode(&s).unwrap();
        raw2[TOKEN_LEN - 1] ^= 0x80;
        assert_eq!(
            Token::decode(&URL_SAFE_NO_PAD.encode(&raw2), &k, NOW),
            Err(PassError::BadSignature)
        );
    }

    #[test]
    fn forged_with_other_secret_refused() {
        let k = ring();
        let forger = Keyring::new(1, [(1u8, [8u8; 32])]).unwrap();
        let s = sample_pass().encode(&forger);
        assert_eq!(Token::decode(&s, &k, NOW), Err(PassError::BadSignature));
        assert_eq!(PassError::BadSignature.reason(), "bad_signature");
    }

    #[test]
    fn expired_refused() {
        let k = ring();
        let s = sample_pass().encode(&k);
        assert!(Token::decode(&s, &k, NOW + 59_999).is_ok());
        assert_eq!(Token::decode(&s, &k, NOW + 60_000), Err(PassError::Expired));
        assert_eq!(PassError::Expired.reason(), "expired");
    }

    #[test]
    fn wrong_kind_and_gate_refused() {
        let k = ring();
        let tk = Token::ticket(3, 5, VisitorId::random(), NOW, 1000).encode(&k);
        assert_eq!(
            Token::decode_as(&tk, &k, NOW, Kind::Pass, 3),
            Err(PassError::WrongKind)
        );
        assert_eq!(
            Token::decode_as(&tk, &k, NOW, Kind::Ticket, 4),
            Err(PassError::WrongGate)
        );
        assert!(Token::decode_as(&tk, &k, NOW, Kind::Ticket, 3).is_ok());
        assert_eq!(PassError::WrongKind.reason(), "wrong_kind");
    }

    #[test]
    fn unknown_key_refused_and_rotation_works() {
        let old = Keyring::new(1, [(1u8, [1u8; 32])]).unwrap();
        let s_old = sample_pass().encode(&old);
        // Rotation: key 2 is current, key 1 still verifies.
        let rotated = Keyring::new(2, [(1u8, [1u8; 32]), (2u8, [2u8; 32])]).unwrap();
        assert_eq!(rotated.current_kid(), 2);
        assert_eq!(Token::decode(&s_old, &rotated, NOW).unwrap(), sample_pass());
        let s_new = sample_pass().encode(&rotated);
        assert_eq!(URL_SAFE_NO_PAD.decode(&s_new).unwrap()[1], 2);
        assert!(Token::decode(&s_new, &rotated, NOW).is_ok());
        // Old key dropped: old tokens refused as unknown key.
        let dropped = Keyring::new(2, [(2u8, [2u8; 32])]).unwrap();
        assert_eq!(
            Token::decode(&s_old, &dropped, NOW),
            Err(PassError::UnknownKey)
        );
        // A node that does not know key 2 yet.
        assert_eq!(Token::decode(&s_new, &old, NOW), Err(PassError::UnknownKey));
        assert_eq!(PassError::UnknownKey.reason(), "unknown_key");
    }

    #[test]
    fn a_key_removed_by_reload_vouches_only_for_tokens_issued_before() {
        let old = Keyring::new(1, [(1u8, [1u8; 32])]).unwrap();
        let issued = sample_pass(); // expires at NOW + 60 s
        let s_old = issued.encode(&old);
        let until = NOW + 60_000;
        let rotated = Keyring::new(2, [(2u8, [2u8; 32])])
            .unwrap()
            .retaining(&old, NOW, until);
        assert_eq!(rotated.current_kid(), 2);
        assert_eq!(rotated.retired_kids().collect::<Vec<_>>(), vec![1]);
        assert_eq!(Token::decode(&s_old, &rotated, NOW), Ok(issued));
        // It still expires when it would have.
        assert_eq!(
            Token::decode(&s_old, &rotated, until),
            Err(PassError::Expired)
        );
        // A token under the retired key claiming a longer life is refused.
        let forged = Token::pass(3, 42, VisitorId([9; 16]), 17, 0xdead_beef, NOW, 120_000);
        assert_eq!(
            Token::decode(&forged.encode(&old), &rotated, NOW),
            Err(PassError::UnknownKey)
        );
        // New tokens are signed with the new key; a second rotation keeps the first bound.
        assert!(Token::decode(&issued.encode(&rotated), &rotated, NOW).is_ok());
        let again = Keyring::new(3, [(3u8, [3u8; 32])]).unwrap().retaining(
            &rotated,
            NOW,
            until + 1_000_000,
        );
        assert_eq!(Token::decode(&s_old, &again, NOW), Ok(issued));
        assert_eq!(
            Token::decode(&forged.encode(&old), &again, NOW),
            Err(PassError::UnknownKey),
            "key 1 keeps the bound it was retired with"
        );
        // A retired key whose bound has passed is dropped at the next rotation.
        let later = Keyring::new(4, [(4u8, [4u8; 32])]).unwrap().retaining(
            &again,
            until + 2_000_000,
            until + 3_000_000,
        );
        assert_eq!(
            later.retired_kids().collect::<Vec<_>>(),
            vec![3],
            "1 and 2 are past their bound"
        );
        // An id reused for a new secret is told apart from a kept key.
        let reused = Keyring::new(1, [(1u8, [9u8; 32])]).unwrap();
        assert_eq!(reused.changed_secrets(&old), vec![1]);
        assert!(old.changed_secrets(&old).is_empty());
        // A key the new ring still has is not retired.
        let kept = Keyring::new(1, [(1u8, [1u8; 32])])
            .unwrap()
            .retaining(&old, NOW, until);
        assert_eq!(kept.retired_kids().count(), 0);
    }

    #[test]
    fn keyring_validation() {
        assert_eq!(
            Keyring::new(1, [(1u8, [0u8; 31])]).unwrap_err(),
            KeyError::TooShort { kid: 1, len: 31 }
        );
        assert_eq!(
            Keyring::new(1, [(1u8, [0u8; 32]), (1u8, [1u8; 32])]).unwrap_err(),
            KeyError::Duplicate(1)
        );
        assert_eq!(
            Keyring::new(3, [(1u8, [0u8; 32])]).unwrap_err(),
            KeyError::MissingCurrent(3)
        );
        let g = Keyring::generate(9);
        assert_eq!(g.kids().collect::<Vec<_>>(), vec![9]);
        let s = sample_pass().encode(&g);
        assert!(Token::decode(&s, &g, NOW).is_ok());
        assert_eq!(
            Token::decode(&s, &Keyring::generate(9), NOW),
            Err(PassError::BadSignature)
        );
    }

    #[test]
    fn malformed_inputs() {
        let k = ring();
        assert_eq!(Token::decode("", &k, NOW), Err(PassError::Malformed));
        assert_eq!(Token::decode("abc", &k, NOW), Err(PassError::Malformed));
        let s = sample_pass().encode(&k);
        // Right length, invalid base64 character.
        let bad = format!("{}*", &s[..ENCODED_LEN - 1]);
        assert_eq!(Token::decode(&bad, &k, NOW), Err(PassError::Malformed));
        // Padded / standard alphabet variants are refused.
        assert_eq!(
            Token::decode(&format!("{s}="), &k, NOW),
            Err(PassError::Malformed)
        );
        // Wrong version byte.
        let mut raw = URL_SAFE_NO_PAD.decode(&s).unwrap();
        raw[0] = 2;
        assert_eq!(
            Token::decode(&URL_SAFE_NO_PAD.encode(&raw), &k, NOW),
            Err(PassError::Malformed)
        );
        // Multi-byte UTF-8 of the right byte length.
        let utf = "é".repeat(ENCODED_LEN / 2);
        assert_eq!(Token::decode(&utf, &k, NOW), Err(PassError::Malformed));
    }

    #[test]
    fn signed_unknown_kind_is_malformed() {
        let k = ring();
        let mut body = sample_pass().body(1);
        body[2] = 9;
        let mut mac = k.current_key().clone();
        mac.update(&body);
        let tag = mac.finalize().into_bytes();
        let mut raw = body.to_vec();
        raw.extend_from_slice(&tag[..MAC_LEN]);
        assert_eq!(
            Token::decode(&URL_SAFE_NO_PAD.encode(&raw), &k, NOW),
            Err(PassError::Malformed)
        );
    }

    #[test]
    fn decode_never_panics_on_random_input() {
        let k = ring();
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=+/.";
        let good = sample_pass().encode(&k);
        for i in 0..8_000 {
            let s: String = match i % 3 {
                // Random bytes turned into (lossy) UTF-8 of random length.
                0 => {
                    let len = rng.gen_range(0..200);
                    let bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                    String::from_utf8_lossy(&bytes).into_owned()
                }
                // Random alphabet strings of exactly the encoded length.
                1 => (0..ENCODED_LEN)
                    .map(|_| alphabet[rng.gen_range(0..alphabet.len())] as char)
                    .collect(),
                // A valid token with one character mutated.
                _ => {
                    let mut b = good.clone().into_bytes();
                    let p = rng.gen_range(0..b.len());
                    b[p] = alphabet[rng.gen_range(0..alphabet.len())];
                    String::from_utf8(b).unwrap()
                }
            };
            let r = Token::decode(&s, &k, NOW);
            if s != good {
                assert!(r.is_err(), "accepted mutated token {s}");
            }
        }
    }
}
