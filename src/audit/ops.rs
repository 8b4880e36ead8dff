//! The operator side: verifying the chain in the database or in an export file, and
//! exporting a range as JSON lines. Blocking; called by `custodian audit …`.

use super::chain::{ChainKey, Checkpoint, GENESIS, Hash};
use super::event::EventRecord;
use super::store;
use super::verify::{ChainVerifier, Failure, Verified};
use anyhow::Context;
use chrono::{DateTime, Utc};
use diesel::pg::PgConnection;
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};
use std::path::Path;

const PAGE: i64 = 10_000;

/// Verifies the whole chain in the database (one consistent snapshot), with the
/// checkpoints stored there plus `extra` (from the checkpoint file). `progress` is
/// called with the number of events verified so far after every page.
pub fn verify_database(
    conn: &mut PgConnection,
    key: ChainKey,
    public: VerifyingKey,
    extra: Vec<Checkpoint>,
    mut progress: impl FnMut(u64),
) -> anyhow::Result<Result<Verified, Failure>> {
    conn.build_transaction()
        .repeatable_read()
        .read_only()
        .run(|conn| -> anyhow::Result<Result<Verified, Failure>> {
            let head = store::head(conn).context("cannot read the audit chain head")?;
            let mut checkpoints = store::checkpoints(conn).context("cannot read checkpoints")?;
            checkpoints.extend(extra);
            let mut v = ChainVerifier::new(key, public);
            for cp in checkpoints {
                if let Err(f) = v.add_checkpoint(cp) {
                    return Ok(Err(f));
                }
            }
            let mut after = 0;
            loop {
                let rows = store::events_after(conn, after, PAGE)
                    .context("cannot read audit events")?;
                let Some(last) = rows.last() else { break };
                after = last.seq;
                for row in rows {
                    let (record, hash) = row.into_parts();
                    if let Err(f) = v.push(&record, &hash) {
                        return Ok(Err(f));
                    }
                }
                progress(v.events());
            }
            let verified = match v.finish() {
                Ok(verified) => verified,
                Err(f) => return Ok(Err(f)),
            };
            if head.seq != verified.last_seq || head.hash != verified.last_hash {
                let seq = head.seq.min(verified.last_seq) + 1;
                let problem = if head.seq > verified.last_seq {
                    format!(
                        "the chain head records {} events but the log ends at sequence {} (events were deleted from the tail)",
                        head.seq, verified.last_seq
                    )
                } else if head.seq < verified.last_seq {
                    format!(
                        "events after the chain head (sequence {}) were inserted outside the writer",
                        head.seq
                    )
                } else {
                    "the chain head hash does not match the last event".to_string()
                };
                return Ok(Err(Failure { seq, problem }));
            }
            Ok(Ok(verified))
        })
}

/// First line of an export.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportHeader {
    pub format: String,
    pub first_seq: i64,
    pub last_seq: i64,
    pub count: i64,
    /// Hex of the hash preceding `first_seq` (zeros when the export starts at 1).
    pub prev_hash: String,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub exported_at: DateTime<Utc>,
}

pub const EXPORT_FORMAT: &str = "custodian-audit-export-v1";

/// One line of an export file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ExportLine {
    Header(ExportHeader),
    Checkpoint(Checkpoint),
    Event {
        hash: String,
        record: Box<EventRecord>,
    },
}

/// Writes the events that occurred in `[since, until)` — as the contiguous sequence
/// range from the first to the last of them, so that the range verifies — with the hash
/// preceding it and the checkpoints within it. Returns the header.
pub fn export(
    conn: &mut PgConnection,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    out: &mut dyn Write,
) -> anyhow::Result<ExportHeader> {
    conn.build_transaction().repeatable_read().read_only().run(
        |conn| -> anyhow::Result<ExportHeader> {
            let (first, last) = store::seq_range(conn, since, until)
                .context("cannot read audit events")?
                .unwrap_or((1, 0));
            let prev = if first <= last {
                store::hash_at(conn, first - 1)
                    .context("cannot read audit events")?
                    .context("the event before the range is missing")?
            } else {
                GENESIS.to_vec()
            };
            let header = ExportHeader {
                format: EXPORT_FORMAT.into(),
                first_seq: first,
                last_seq: last,
                count: (last - first + 1).max(0),
                prev_hash: hex::encode(prev),
                since,
                until,
                exported_at: Utc::now(),
            };
            let mut line = |l: &ExportLine| -> anyhow::Result<()> {
                serde_json::to_writer(&mut *out, l)?;
                out.write_all(b"\n")?;
                Ok(())
            };
            line(&ExportLine::Header(header.clone()))?;
            for cp in store::checkpoints(conn).context("cannot read checkpoints")? {
                if cp.seq >= first - 1 && cp.seq <= last {
                    line(&ExportLine::Checkpoint(cp))?;
                }
            }
            let mut from = first;
            while from <= last {
                let rows = store::events_between(conn, from, last, PAGE)
                    .context("cannot read audit events")?;
                let Some(tail) = rows.last() else { break };
                from = tail.seq + 1;
                for row in rows {
                    let (record, hash) = row.into_parts();
                    line(&ExportLine::Event {
                        hash: hex::encode(hash),
                        record: Box::new(record),
                    })?;
                }
            }
            out.flush()?;
            Ok(header)
        },
    )
}

/// Verifies an export file offline, with `extra` checkpoints (from a checkpoint file;
/// those outside the exported range are ignored).
pub fn verify_export(
    path: &Path,
    key: ChainKey,
    public: VerifyingKey,
    extra: Vec<Checkpoint>,
    mut progress: impl FnMut(u64),
) -> anyhow::Result<Result<Verified, Failure>> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot read the export file {}", path.display()))?;
    let mut reader = std::io::BufReader::new(file);
    // A console export of selected events is verified by its own rules.
    let mut first = String::new();
    reader
        .read_line(&mut first)
        .context("cannot read the export file")?;
    if super::selection::is_selection(first.trim_end()) {
        let mut text = first;
        std::io::Read::read_to_string(&mut reader, &mut text)
            .context("cannot read the export file")?;
        return Ok(super::selection::verify(&text, &key, &public));
    }
    let mut lines = std::io::Read::chain(std::io::Cursor::new(first), reader).lines();
    let parse = |n: usize, text: &str| -> Result<ExportLine, Failure> {
        serde_json::from_str(text).map_err(|_| Failure {
            seq: 0,
            problem: format!("line {n} of the export is not a valid export line"),
        })
    };
    let header = match lines.next() {
        Some(Ok(text)) => match parse(1, &text) {
            Ok(ExportLine::Header(h)) if h.format == EXPORT_FORMAT => h,
            Ok(_) => return Ok(fail_line(0, "the export does not start with its header")),
            Err(f) => return Ok(Err(f)),
        },
        Some(Err(e)) => return Err(e).context("cannot read the export file"),
        None => return Ok(fail_line(0, "the export file is empty")),
    };
    let Some(prev) = hex::decode(&header.prev_hash)
        .ok()
        .and_then(|b| Hash::try_from(b).ok())
    else {
        return Ok(fail_line(header.first_seq, "malformed previous hash"));
    };
    let mut v = ChainVerifier::starting_at(key, public, header.first_seq, prev);
    for cp in extra {
        if cp.seq <= header.last_seq
            && let Err(f) = v.add_checkpoint(cp)
        {
            return Ok(Err(f));
        }
    }
    for (i, text) in lines.enumerate() {
        let text = text.context("cannot read the export file")?;
        if text.trim().is_empty() {
            continue;
        }
        match parse(i + 2, &text) {
            Ok(ExportLine::Checkpoint(cp)) => {
                if let Err(f) = v.add_checkpoint(cp) {
                    return Ok(Err(f));
                }
            }
            Ok(ExportLine::Event { hash, record }) => {
                let stored = hex::decode(&hash).unwrap_or_default();
                if let Err(f) = v.push(&record, &stored) {
                    return Ok(Err(f));
                }
                if v.events().is_multiple_of(100_000) {
                    progress(v.events());
                }
            }
            Ok(ExportLine::Header(_)) => {
                return Ok(fail_line(v.next_seq(), "a second header inside the export"));
            }
            Err(mut f) => {
                f.seq = v.next_seq();
                return Ok(Err(f));
            }
        }
    }
    let next = v.next_seq();
    if next - 1 != header.last_seq {
        return Ok(fail_line(
            next,
            format!(
                "the export ends at sequence {} but its header says {}",
                next - 1,
                header.last_seq
            ),
        ));
    }
    Ok(v.finish())
}

fn fail_line<T>(seq: i64, problem: impl Into<String>) -> Result<T, Failure> {
    Err(Failure {
        seq,
        problem: problem.into(),
    })
}
