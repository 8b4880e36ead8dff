//! Verified exports of a *filtered* set of audit events (the console's export): JSON
//! lines that `custodian audit verify --file` checks offline, like a whole-range export.
//!
//! A selection is not a contiguous range, so the chain cannot be walked end to end.
//! Instead each event carries the hash preceding it and its own: the verifier recomputes
//! `hash = HMAC(chain key, prev_hash ‖ canonical(record))`, which only the chain key's
//! holder can produce, so an edited event fails. The checkpoints the selection touches
//! (and the newest one) come with it and their signatures are checked. The last line is
//! a seal: the SHA-256 of every line before it and the number of events, signed with the
//! checkpoint key — so a dropped, added, reordered or changed line fails too.

use super::chain::{self, ChainKey, Checkpoint, CheckpointSigner, Hash};
use super::event::EventRecord;
use super::search::{self, Cursor, Filter};
use super::store;
use super::verify::{Failure, Verified};
use chrono::{DateTime, Utc};
use diesel::pg::PgConnection;
use diesel::prelude::*;
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;

pub const SELECTION_FORMAT: &str = "custodian-audit-selection-v1";

/// Most events one export holds.
pub const MAX_EVENTS: i64 = 50_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectionHeader {
    pub format: String,
    /// The filter, as the console's query string (ids and codes only).
    pub filter: String,
    pub exported_at: DateTime<Utc>,
}

/// One line of a selection export.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SelectionLine {
    Header(SelectionHeader),
    Checkpoint(Checkpoint),
    Event {
        prev_hash: String,
        hash: String,
        record: Box<EventRecord>,
    },
    Seal {
        count: u64,
        digest: String,
        key_id: String,
        signature: String,
    },
}

fn line(out: &mut Vec<u8>, l: &SelectionLine) -> Result<(), serde_json::Error> {
    serde_json::to_writer(&mut *out, l)?;
    out.push(b'\n');
    Ok(())
}

/// Writes the events matching `filter` (oldest first, at most [`MAX_EVENTS`]) as a
/// sealed selection; `describe` is the filter as shown to people. Returns the file and
/// the number of events. One consistent snapshot.
pub fn export(
    conn: &mut PgConnection,
    filter: &Filter,
    describe: &str,
    signer: &CheckpointSigner,
    now: DateTime<Utc>,
) -> anyhow::Result<(Vec<u8>, u64)> {
    conn.build_transaction().repeatable_read().read_only().run(
        |conn| -> anyhow::Result<(Vec<u8>, u64)> {
            let f = Filter {
                oldest_first: true,
                ..filter.clone()
            };
            let rows = search::search(conn, &f, Cursor::Newest, MAX_EVENTS)?.rows;
            let before: Vec<i64> = rows.iter().map(|r| r.seq - 1).collect();
            let prev = hashes_at(conn, &before)?;
            let mut out = Vec::new();
            line(
                &mut out,
                &SelectionLine::Header(SelectionHeader {
                    format: SELECTION_FORMAT.into(),
                    filter: describe.into(),
                    exported_at: now,
                }),
            )?;
            let seqs: std::collections::HashSet<i64> = rows.iter().map(|r| r.seq).collect();
            let all = store::checkpoints(conn)?;
            let newest = all.last().map(|c| c.checkpoint);
            for cp in all {
                if seqs.contains(&cp.seq) || Some(cp.checkpoint) == newest {
                    line(&mut out, &SelectionLine::Checkpoint(cp))?;
                }
            }
            let count = rows.len() as u64;
            for row in rows {
                let prev_hash = prev
                    .get(&(row.seq - 1))
                    .cloned()
                    .ok_or_else(|| anyhow::anyhow!("the event before a selected one is missing"))?;
                let (record, hash) = row.into_parts();
                line(
                    &mut out,
                    &SelectionLine::Event {
                        prev_hash: hex::encode(prev_hash),
                        hash: hex::encode(hash),
                        record: Box::new(record),
                    },
                )?;
            }
            let digest: Hash = Sha256::digest(&out).into();
            line(
                &mut out,
                &SelectionLine::Seal {
                    count,
                    digest: hex::encode(digest),
                    key_id: signer.key_id(),
                    signature: signer.sign_selection(&digest, count),
                },
            )?;
            Ok((out, count))
        },
    )
}

/// The stored hashes at these sequence numbers (0: the genesis hash).
fn hashes_at(conn: &mut PgConnection, seqs: &[i64]) -> QueryResult<HashMap<i64, Vec<u8>>> {
    use crate::schema::audit_events;
    let mut out: HashMap<i64, Vec<u8>> = audit_events::table
        .filter(audit_events::seq.eq_any(seqs))
        .select((audit_events::seq, audit_events::hash))
        .load::<(i64, Vec<u8>)>(conn)?
        .into_iter()
        .collect();
    if seqs.contains(&0) {
        out.insert(0, chain::GENESIS.to_vec());
    }
    Ok(out)
}

/// Is this first line of a file a selection's header?
pub fn is_selection(first_line: &str) -> bool {
    matches!(
        serde_json::from_str::<SelectionLine>(first_line),
        Ok(SelectionLine::Header(h)) if h.format == SELECTION_FORMAT
    )
}

fn fail<T>(seq: i64, problem: impl Into<String>) -> Result<T, Failure> {
    Err(Failure {
        seq,
        problem: problem.into(),
    })
}

fn hash_of(hex_text: &str) -> Option<Hash> {
    hex::decode(hex_text).ok()?.try_into().ok()
}

/// Verifies a selection offline: each event's link under the chain key, the checkpoint
/// signatures (and their hashes where they name a selected event), and the seal over
/// every line before it.
pub fn verify(text: &str, key: &ChainKey, public: &VerifyingKey) -> Result<Verified, Failure> {
    let mut digest = Sha256::new();
    let mut events = 0u64;
    let mut first_seq = None;
    let mut last: Option<(i64, Hash)> = None;
    let mut hashes: HashMap<i64, Hash> = HashMap::new();
    let mut checkpoints: Vec<Checkpoint> = Vec::new();
    let mut sealed = false;
    for (i, raw) in text.split_inclusive('\n').enumerate() {
        let at = last.map_or(0, |(s, _)| s);
        if sealed {
            return fail(at, "lines after the seal");
        }
        let parsed: SelectionLine = match serde_json::from_str(raw.trim_end_matches('\n')) {
            Ok(l) => l,
            Err(_) => return fail(at, format!("line {} is not a valid selection line", i + 1)),
        };
        match (i, parsed) {
            (0, SelectionLine::Header(h)) if h.format == SELECTION_FORMAT => {}
            (0, _) | (_, SelectionLine::Header(_)) => {
                return fail(at, "the selection does not start with its one header");
            }
            (_, SelectionLine::Checkpoint(cp)) => {
                if let Err(problem) = cp.verify(public) {
                    return fail(cp.seq, format!("checkpoint #{} {problem}", cp.checkpoint));
                }
                checkpoints.push(cp);
            }
            (
                _,
                SelectionLine::Event {
                    prev_hash,
                    hash,
                    record,
                },
            ) => {
                let (Some(prev), Some(stored)) = (hash_of(&prev_hash), hash_of(&hash)) else {
                    return fail(record.seq, "malformed hash");
                };
                if let Some((seq, h)) = last {
                    if record.seq <= seq {
                        return fail(record.seq, "events out of order");
                    }
                    if record.seq == seq + 1 && prev != h {
                        return fail(record.seq, "does not follow the event before it");
                    }
                }
                if key.link(&prev, &record) != stored {
                    return fail(record.seq, "hash mismatch (the event was changed)");
                }
                first_seq.get_or_insert(record.seq);
                hashes.insert(record.seq, stored);
                last = Some((record.seq, stored));
                events += 1;
            }
            (
                _,
                SelectionLine::Seal {
                    count,
                    digest: claimed,
                    signature,
                    ..
                },
            ) => {
                let computed: Hash = digest.clone().finalize().into();
                if hash_of(&claimed) != Some(computed) {
                    return fail(at, "the seal does not match the lines before it");
                }
                if count != events {
                    return fail(at, "the seal counts a different number of events");
                }
                if !chain::verify_selection(public, &computed, count, &signature) {
                    return fail(at, "the seal's signature is invalid");
                }
                sealed = true;
                continue;
            }
        }
        digest.update(raw.as_bytes());
    }
    if !sealed {
        return fail(
            last.map_or(0, |(s, _)| s),
            "the selection has no seal (cut short?)",
        );
    }
    for cp in &checkpoints {
        if let Some(h) = hashes.get(&cp.seq)
            && cp.head_hash_bytes() != Some(*h)
        {
            return fail(
                cp.seq,
                format!("checkpoint #{} does not match", cp.checkpoint),
            );
        }
    }
    let (last_seq, last_hash) = last.unwrap_or((0, chain::GENESIS));
    Ok(Verified {
        events,
        first_seq,
        last_seq,
        last_hash,
        last_checkpoint: checkpoints.iter().map(|c| c.checkpoint).max(),
    })
}
