//! The hash chain and the signed checkpoints.
//!
//! `hash_n = HMAC-SHA256(chain_key, hash_{n-1} ‖ canonical(event_n))`, `hash_0` = 32 zero
//! bytes. A checkpoint is an Ed25519 signature over (number, sequence, head hash, time,
//! key id), made with a key separate from the chain key.

use super::event::EventRecord;
use base64::Engine;
use chrono::{DateTime, Utc};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

pub type Hash = [u8; 32];

/// The hash that precedes the first event.
pub const GENESIS: Hash = [0u8; 32];

/// The HMAC key of the chain, kept as the keyed HMAC state (cloned per link). `Debug`
/// does not print it.
#[derive(Clone)]
pub struct ChainKey(Hmac<Sha256>);

impl std::fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChainKey([redacted])")
    }
}

impl ChainKey {
    pub fn new(bytes: [u8; 32]) -> Self {
        use hmac::digest::KeyInit;
        // HMAC pads keys shorter than the block with zeros; doing it here makes the
        // constructor infallible.
        let mut block = Zeroizing::new([0u8; 64]);
        block[..32].copy_from_slice(&bytes);
        let bytes = Zeroizing::new(bytes);
        drop(bytes);
        Self(<Hmac<Sha256> as KeyInit>::new(&(*block).into()))
    }

    /// The hash of `record` following `prev`.
    pub fn link(&self, prev: &Hash, record: &EventRecord) -> Hash {
        let mut mac = self.0.clone();
        mac.update(prev);
        mac.update(&record.canonical());
        mac.finalize().into_bytes().into()
    }
}

/// Identifies a checkpoint public key: hex of the first 8 bytes of SHA-256(public key).
pub fn key_id(public: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(public.as_bytes())[..8])
}

/// Signs checkpoints.
#[derive(Clone)]
pub struct CheckpointSigner {
    key: SigningKey,
}

impl std::fmt::Debug for CheckpointSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CheckpointSigner(key id {})", self.key_id())
    }
}

impl CheckpointSigner {
    pub fn from_seed(seed: [u8; 32]) -> Self {
        let seed = Zeroizing::new(seed);
        Self {
            key: SigningKey::from_bytes(&seed),
        }
    }

    pub fn public_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    pub fn key_id(&self) -> String {
        key_id(&self.public_key())
    }

    pub fn sign(
        &self,
        number: i64,
        seq: i64,
        head_hash: Hash,
        created_at: DateTime<Utc>,
    ) -> Checkpoint {
        let mut cp = Checkpoint {
            checkpoint: number,
            seq,
            head_hash: hex::encode(head_hash),
            created_at,
            key_id: self.key_id(),
            signature: String::new(),
        };
        let sig = self.key.sign(&cp.signed_bytes(&head_hash));
        cp.signature = hex::encode(sig.to_bytes());
        cp
    }
}

/// What a selection seal signs begins with this (so that it can never pass for a
/// checkpoint signature, and the other way round).
const SELECTION_PREFIX: &[u8] = b"custodian.audit.selection.v1\0";

fn selection_bytes(digest: &Hash, count: u64) -> Vec<u8> {
    let mut m = Vec::with_capacity(72);
    m.extend_from_slice(SELECTION_PREFIX);
    m.extend_from_slice(digest);
    m.extend_from_slice(&count.to_be_bytes());
    m
}

impl CheckpointSigner {
    /// Signs an export of selected events: the SHA-256 `digest` of its lines and the
    /// number of events in it (hex of the Ed25519 signature).
    pub fn sign_selection(&self, digest: &Hash, count: u64) -> String {
        hex::encode(self.key.sign(&selection_bytes(digest, count)).to_bytes())
    }
}

/// Checks a selection seal made by [`CheckpointSigner::sign_selection`].
pub fn verify_selection(public: &VerifyingKey, digest: &Hash, count: u64, signature: &str) -> bool {
    let Some(sig) = hex::decode(signature)
        .ok()
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
    else {
        return false;
    };
    public
        .verify(
            &selection_bytes(digest, count),
            &Signature::from_bytes(&sig),
        )
        .is_ok()
}

/// Base64 of a public key, as printed by `custodian audit public-key`.
pub fn encode_public_key(public: &VerifyingKey) -> String {
    base64::engine::general_purpose::STANDARD.encode(public.as_bytes())
}

pub fn decode_public_key(text: &str) -> Option<VerifyingKey> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()?;
    let bytes: [u8; 32] = bytes.try_into().ok()?;
    VerifyingKey::from_bytes(&bytes).ok()
}

/// A signed statement "the chain had `seq` events and ended in `head_hash`". One JSON
/// line in the checkpoint file and in exports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub checkpoint: i64,
    pub seq: i64,
    /// Hex of the 32-byte head hash.
    pub head_hash: String,
    pub created_at: DateTime<Utc>,
    pub key_id: String,
    /// Hex of the 64-byte Ed25519 signature.
    pub signature: String,
}

const CHECKPOINT_PREFIX: &[u8] = b"custodian.audit.checkpoint.v1\0";

impl Checkpoint {
    fn signed_bytes(&self, head_hash: &Hash) -> Vec<u8> {
        let mut m = Vec::with_capacity(128);
        m.extend_from_slice(CHECKPOINT_PREFIX);
        m.extend_from_slice(&self.checkpoint.to_be_bytes());
        m.extend_from_slice(&self.seq.to_be_bytes());
        m.extend_from_slice(head_hash);
        m.extend_from_slice(&self.created_at.timestamp_micros().to_be_bytes());
        m.extend_from_slice(&(self.key_id.len() as u32).to_be_bytes());
        m.extend_from_slice(self.key_id.as_bytes());
        m
    }

    pub fn head_hash_bytes(&self) -> Option<Hash> {
        hex::decode(&self.head_hash).ok()?.try_into().ok()
    }

    /// Checks the signature with `public`.
    pub fn verify(&self, public: &VerifyingKey) -> Result<(), &'static str> {
        if self.key_id != key_id(public) {
            return Err("was signed by a different key (key id differs)");
        }
        let hash = self.head_hash_bytes().ok_or("has a malformed head hash")?;
        let sig: [u8; 64] = hex::decode(&self.signature)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or("has a malformed signature")?;
        public
            .verify(&self.signed_bytes(&hash), &Signature::from_bytes(&sig))
            .map_err(|_| "has an invalid signature")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::SubsecRound;

    #[test]
    fn checkpoint_signature_verifies_and_detects_changes() {
        let signer = CheckpointSigner::from_seed([7u8; 32]);
        let now = Utc::now().trunc_subsecs(6);
        let cp = signer.sign(3, 100, [1u8; 32], now);
        assert!(cp.verify(&signer.public_key()).is_ok());
        let mut forged = cp.clone();
        forged.seq = 99;
        assert!(forged.verify(&signer.public_key()).is_err());
        let mut forged = cp.clone();
        forged.head_hash = hex::encode([2u8; 32]);
        assert!(forged.verify(&signer.public_key()).is_err());
        let other = CheckpointSigner::from_seed([8u8; 32]);
        assert!(cp.verify(&other.public_key()).is_err());
        let line = serde_json::to_string(&cp).unwrap();
        let back: Checkpoint = serde_json::from_str(&line).unwrap();
        assert!(back.verify(&signer.public_key()).is_ok());
    }

    #[test]
    fn public_key_round_trips_through_base64() {
        let signer = CheckpointSigner::from_seed([9u8; 32]);
        let text = encode_public_key(&signer.public_key());
        assert_eq!(decode_public_key(&text), Some(signer.public_key()));
        assert!(decode_public_key("not base64!").is_none());
        assert!(!format!("{signer:?}").contains(&text));
    }

    #[test]
    fn link_depends_on_key_previous_hash_and_record() {
        use super::super::event::*;
        let e = AuditEvent::new(Actor::anonymous(), AuditAction::Login, Outcome::Permit);
        let r = e.to_record(1);
        let k1 = ChainKey::new([1u8; 32]);
        let k2 = ChainKey::new([2u8; 32]);
        let h = k1.link(&GENESIS, &r);
        assert_eq!(h, k1.link(&GENESIS, &r));
        assert_ne!(h, k2.link(&GENESIS, &r));
        assert_ne!(h, k1.link(&[1u8; 32], &r));
        assert_ne!(h, k1.link(&GENESIS, &e.to_record(2)));
    }
}
