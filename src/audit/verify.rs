//! Verification: recomputes every link, checks sequence continuity, every checkpoint
//! signature, that every checkpoint matches the chain at its sequence, and that the
//! log still reaches the newest checkpoint (truncation, rollback).

use super::chain::{ChainKey, Checkpoint, GENESIS, Hash};
use super::event::EventRecord;
use ed25519_dalek::VerifyingKey;
use std::collections::BTreeMap;
use std::fmt;

/// Why verification failed, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub seq: i64,
    pub problem: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FAILED at sequence {}: {}", self.seq, self.problem)
    }
}

/// A successful verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub events: u64,
    pub first_seq: Option<i64>,
    pub last_seq: i64,
    pub last_hash: Hash,
    pub last_checkpoint: Option<i64>,
}

impl fmt::Display for Verified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.last_checkpoint {
            Some(k) => write!(f, "OK: {} events, last checkpoint #{k}", self.events),
            None => write!(f, "OK: {} events, no checkpoint yet", self.events),
        }
    }
}

fn fail<T>(seq: i64, problem: impl Into<String>) -> Result<T, Failure> {
    Err(Failure {
        seq,
        problem: problem.into(),
    })
}

/// Streaming verifier: feed it checkpoints, then events in order, then `finish`.
pub struct ChainVerifier {
    key: ChainKey,
    public: VerifyingKey,
    next_seq: i64,
    prev: Hash,
    events: u64,
    first_seq: Option<i64>,
    /// Checkpoints by sequence number (several may name the same sequence).
    by_seq: BTreeMap<i64, Vec<Checkpoint>>,
    by_number: BTreeMap<i64, Checkpoint>,
    last_checkpoint_seen: Option<i64>,
}

impl ChainVerifier {
    /// Starts at the beginning of the chain.
    pub fn new(key: ChainKey, public: VerifyingKey) -> Self {
        Self::starting_at(key, public, 1, GENESIS)
    }

    /// Starts at `first_seq`, whose predecessor's hash is `prev` (exports of a range).
    pub fn starting_at(key: ChainKey, public: VerifyingKey, first_seq: i64, prev: Hash) -> Self {
        Self {
            key,
            public,
            next_seq: first_seq,
            prev,
            events: 0,
            first_seq: None,
            by_seq: BTreeMap::new(),
            by_number: BTreeMap::new(),
            last_checkpoint_seen: None,
        }
    }

    /// Adds a checkpoint (from the database, a checkpoint file or an export). Checks its
    /// signature now; checks its hash when the chain reaches its sequence.
    pub fn add_checkpoint(&mut self, cp: Checkpoint) -> Result<(), Failure> {
        if let Err(problem) = cp.verify(&self.public) {
            return fail(cp.seq, format!("checkpoint #{} {problem}", cp.checkpoint));
        }
        if let Some(known) = self.by_number.get(&cp.checkpoint) {
            if *known != cp {
                return fail(
                    cp.seq,
                    format!(
                        "two different checkpoints #{} are validly signed",
                        cp.checkpoint
                    ),
                );
            }
            return Ok(());
        }
        if cp.seq < self.next_seq - 1 {
            // Before the verified range: cannot be checked here (exports of a range).
            return Ok(());
        }
        self.by_number.insert(cp.checkpoint, cp.clone());
        self.by_seq.entry(cp.seq).or_default().push(cp);
        Ok(())
    }

    /// Checks the next stored event and its stored hash.
    pub fn push(&mut self, record: &EventRecord, stored_hash: &[u8]) -> Result<(), Failure> {
        let expected = self.next_seq;
        if record.seq != expected {
            return if record.seq > expected {
                fail(
                    expected,
                    format!(
                        "event missing (the next stored event is sequence {})",
                        record.seq
                    ),
                )
            } else {
                fail(
                    expected,
                    format!("out of order (found sequence {} again)", record.seq),
                )
            };
        }
        let hash = self.key.link(&self.prev, record);
        if hash.as_slice() != stored_hash {
            return fail(
                expected,
                "hash mismatch: the event was altered, reordered or forged (or the chain key is wrong)",
            );
        }
        self.check_checkpoints_at(expected, &hash)?;
        self.prev = hash;
        self.next_seq += 1;
        self.events += 1;
        self.first_seq.get_or_insert(expected);
        Ok(())
    }

    fn check_checkpoints_at(&mut self, seq: i64, hash: &Hash) -> Result<(), Failure> {
        if let Some(cps) = self.by_seq.get(&seq) {
            for cp in cps {
                if cp.head_hash_bytes().as_ref() != Some(hash) {
                    return fail(
                        seq,
                        format!(
                            "checkpoint #{} does not match the chain (the chain was rewritten)",
                            cp.checkpoint
                        ),
                    );
                }
                self.last_checkpoint_seen = self.last_checkpoint_seen.max(Some(cp.checkpoint));
            }
        }
        Ok(())
    }

    /// The sequence number expected next.
    pub fn next_seq(&self) -> i64 {
        self.next_seq
    }

    pub fn events(&self) -> u64 {
        self.events
    }

    /// Ends verification: every checkpoint must lie within the verified chain.
    pub fn finish(mut self) -> Result<Verified, Failure> {
        let last_seq = self.next_seq - 1;
        // A checkpoint of the (empty) starting point.
        let prev = self.prev;
        if self.events == 0 {
            self.check_checkpoints_at(last_seq, &prev)?;
        }
        if let Some((&seq, cps)) = self.by_seq.range(last_seq + 1..).next() {
            let number = cps.iter().map(|c| c.checkpoint).max().unwrap_or_default();
            return fail(
                last_seq + 1,
                format!(
                    "the log ends at sequence {last_seq} but checkpoint #{number} covers sequence {seq} (events were deleted from the tail or the database was rolled back)"
                ),
            );
        }
        Ok(Verified {
            events: self.events,
            first_seq: self.first_seq,
            last_seq,
            last_hash: self.prev,
            last_checkpoint: self.last_checkpoint_seen,
        })
    }
}

/// Reads a checkpoint file (one JSON object per line).
pub fn read_checkpoint_file(path: &std::path::Path) -> anyhow::Result<Vec<Checkpoint>> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the checkpoint file {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{} line {}: not a checkpoint", path.display(), i + 1))
        })
        .collect()
}
