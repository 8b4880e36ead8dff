//! Audit tables: appending a batch under the chain-head lock, checkpoints, reading the
//! chain back in order. Query functions take `&mut PgConnection` so they compose inside
//! one transaction.

use super::chain::{ChainKey, Checkpoint, CheckpointSigner, Hash};
use super::event::{AuditEvent, EventRecord};
use crate::domain::{PatientId, UserId};
use crate::schema::{audit_chain_head, audit_checkpoints, audit_events};
use chrono::{DateTime, SubsecRound, Utc};
use diesel::pg::PgConnection;
use diesel::prelude::*;
use uuid::Uuid;

/// When checkpoints are due.
#[derive(Clone, Copy, Debug)]
pub struct CheckpointPolicy {
    pub every_events: u64,
    pub every_secs: u64,
}

#[derive(Queryable, Selectable, Insertable, Debug, Clone)]
#[diesel(table_name = audit_events, check_for_backend(diesel::pg::Pg))]
pub struct EventRow {
    pub seq: i64,
    pub event_id: Uuid,
    pub occurred_at: DateTime<Utc>,
    pub actor_user_id: Option<UserId>,
    pub actor_client_id: Option<String>,
    pub actor_roles: Vec<String>,
    pub auth_method: String,
    pub client_app: Option<String>,
    pub action: String,
    pub resource_type: Option<String>,
    pub resource_id: Option<Uuid>,
    pub patient_ids: Vec<PatientId>,
    pub outcome: String,
    pub deny_reason: Option<String>,
    pub purpose_of_use: Option<String>,
    pub break_glass_grant_id: Option<Uuid>,
    pub source_ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    pub hash: Vec<u8>,
    pub occurrences: Option<i32>,
    pub basis: Option<String>,
}

impl EventRow {
    pub fn new(r: EventRecord, hash: Hash) -> Self {
        Self {
            seq: r.seq,
            event_id: r.event_id,
            occurred_at: r.occurred_at,
            actor_user_id: r.actor_user_id,
            actor_client_id: r.actor_client_id,
            actor_roles: r.actor_roles,
            auth_method: r.auth_method,
            client_app: r.client_app,
            action: r.action,
            resource_type: r.resource_type,
            resource_id: r.resource_id,
            patient_ids: r.patient_ids,
            outcome: r.outcome,
            deny_reason: r.deny_reason,
            purpose_of_use: r.purpose_of_use,
            break_glass_grant_id: r.break_glass_grant_id,
            source_ip: r.source_ip,
            user_agent: r.user_agent,
            request_id: r.request_id,
            hash: hash.to_vec(),
            occurrences: r.occurrences,
            basis: r.basis,
        }
    }

    /// Splits the row into the hashed record and the stored hash.
    pub fn into_parts(self) -> (EventRecord, Vec<u8>) {
        (
            EventRecord {
                seq: self.seq,
                event_id: self.event_id,
                occurred_at: self.occurred_at,
                actor_user_id: self.actor_user_id,
                actor_client_id: self.actor_client_id,
                actor_roles: self.actor_roles,
                auth_method: self.auth_method,
                client_app: self.client_app,
                action: self.action,
                resource_type: self.resource_type,
                resource_id: self.resource_id,
                patient_ids: self.patient_ids,
                outcome: self.outcome,
                deny_reason: self.deny_reason,
                purpose_of_use: self.purpose_of_use,
                break_glass_grant_id: self.break_glass_grant_id,
                source_ip: self.source_ip,
                user_agent: self.user_agent,
                request_id: self.request_id,
                occurrences: self.occurrences,
                basis: self.basis,
            },
            self.hash,
        )
    }
}

#[derive(Queryable, Selectable, Debug, Clone)]
#[diesel(table_name = audit_chain_head, check_for_backend(diesel::pg::Pg))]
pub struct HeadRow {
    pub seq: i64,
    pub hash: Vec<u8>,
    pub checkpoint_no: i64,
    pub checkpoint_seq: i64,
    pub checkpoint_at: DateTime<Utc>,
}

#[derive(Queryable, Selectable, Insertable, Debug, Clone)]
#[diesel(table_name = audit_checkpoints, check_for_backend(diesel::pg::Pg))]
pub struct CheckpointRow {
    pub checkpoint_no: i64,
    pub seq: i64,
    pub head_hash: Vec<u8>,
    pub created_at: DateTime<Utc>,
    pub key_id: String,
    pub signature: Vec<u8>,
}

impl CheckpointRow {
    fn from_checkpoint(cp: &Checkpoint) -> Self {
        Self {
            checkpoint_no: cp.checkpoint,
            seq: cp.seq,
            head_hash: hex::decode(&cp.head_hash).unwrap_or_default(),
            created_at: cp.created_at,
            key_id: cp.key_id.clone(),
            signature: hex::decode(&cp.signature).unwrap_or_default(),
        }
    }

    pub fn to_checkpoint(&self) -> Checkpoint {
        Checkpoint {
            checkpoint: self.checkpoint_no,
            seq: self.seq,
            head_hash: hex::encode(&self.head_hash),
            created_at: self.created_at,
            key_id: self.key_id.clone(),
            signature: hex::encode(&self.signature),
        }
    }
}

fn head_hash(head: &HeadRow) -> Result<Hash, diesel::result::Error> {
    head.hash.as_slice().try_into().map_err(|_| {
        diesel::result::Error::DeserializationError("audit chain head hash is not 32 bytes".into())
    })
}

/// The result of appending a batch.
#[derive(Debug)]
pub struct Appended {
    pub first_seq: i64,
    pub last_seq: i64,
    pub checkpoint: Option<Checkpoint>,
}

fn lock_head(conn: &mut PgConnection) -> QueryResult<HeadRow> {
    audit_chain_head::table
        .select(HeadRow::as_select())
        .for_update()
        .first(conn)
}

fn checkpoint_due(head: &HeadRow, new_seq: i64, now: DateTime<Utc>, p: CheckpointPolicy) -> bool {
    let since = new_seq - head.checkpoint_seq;
    if since <= 0 {
        return false;
    }
    since as u64 >= p.every_events
        || (now - head.checkpoint_at).num_seconds() >= p.every_secs as i64
}

/// Appends `events` to the chain in one transaction: locks the head row (serialising
/// every writer of every instance), hashes in order, inserts all rows with one
/// multi-row INSERT, writes a checkpoint when due, advances the head, commits.
pub fn append_batch(
    conn: &mut PgConnection,
    key: &ChainKey,
    signer: &CheckpointSigner,
    policy: CheckpointPolicy,
    events: &[AuditEvent],
) -> QueryResult<Appended> {
    conn.transaction(|conn| {
        let head = lock_head(conn)?;
        let mut prev = head_hash(&head)?;
        let mut seq = head.seq;
        let mut rows = Vec::with_capacity(events.len());
        for event in events {
            seq += 1;
            let record = event.to_record(seq);
            let hash = key.link(&prev, &record);
            prev = hash;
            rows.push(EventRow::new(record, hash));
        }
        diesel::insert_into(audit_events::table)
            .values(&rows)
            .execute(conn)?;
        let now = Utc::now().trunc_subsecs(6);
        let checkpoint = if checkpoint_due(&head, seq, now, policy) {
            Some(signer.sign(head.checkpoint_no + 1, seq, prev, now))
        } else {
            None
        };
        advance_head(conn, seq, &prev, checkpoint.as_ref())?;
        Ok(Appended {
            first_seq: head.seq + 1,
            last_seq: seq,
            checkpoint,
        })
    })
}

fn advance_head(
    conn: &mut PgConnection,
    seq: i64,
    hash: &Hash,
    checkpoint: Option<&Checkpoint>,
) -> QueryResult<()> {
    use audit_chain_head::dsl as h;
    match checkpoint {
        Some(cp) => {
            diesel::insert_into(audit_checkpoints::table)
                .values(CheckpointRow::from_checkpoint(cp))
                .execute(conn)?;
            diesel::update(audit_chain_head::table)
                .set((
                    h::seq.eq(seq),
                    h::hash.eq(hash.as_slice()),
                    h::checkpoint_no.eq(cp.checkpoint),
                    h::checkpoint_seq.eq(cp.seq),
                    h::checkpoint_at.eq(cp.created_at),
                ))
                .execute(conn)?;
        }
        None => {
            diesel::update(audit_chain_head::table)
                .set((h::seq.eq(seq), h::hash.eq(hash.as_slice())))
                .execute(conn)?;
        }
    }
    Ok(())
}

/// Writes a checkpoint of the current head if events arrived since the last one and
/// the time policy says so (the idle timer of the writer).
pub fn checkpoint_if_due(
    conn: &mut PgConnection,
    signer: &CheckpointSigner,
    policy: CheckpointPolicy,
) -> QueryResult<Option<Checkpoint>> {
    conn.transaction(|conn| {
        let head = lock_head(conn)?;
        let now = Utc::now().trunc_subsecs(6);
        let time_policy = CheckpointPolicy {
            every_events: u64::MAX,
            ..policy
        };
        if !checkpoint_due(&head, head.seq, now, time_policy) {
            return Ok(None);
        }
        let cp = signer.sign(head.checkpoint_no + 1, head.seq, head_hash(&head)?, now);
        advance_head(conn, head.seq, &head_hash(&head)?, Some(&cp))?;
        Ok(Some(cp))
    })
}

/// Writes a checkpoint of the current head now, unless the head is already checkpointed.
pub fn checkpoint_now(
    conn: &mut PgConnection,
    signer: &CheckpointSigner,
) -> QueryResult<Option<Checkpoint>> {
    checkpoint_if_due(
        conn,
        signer,
        CheckpointPolicy {
            every_events: u64::MAX,
            every_secs: 0,
        },
    )
}

/// The head row (without locking it).
pub fn head(conn: &mut PgConnection) -> QueryResult<HeadRow> {
    audit_chain_head::table
        .select(HeadRow::as_select())
        .first(conn)
}

/// The latest `limit` events (with `seq < before`, when given), newest first.
pub fn recent(
    conn: &mut PgConnection,
    before: Option<i64>,
    limit: i64,
) -> QueryResult<Vec<EventRow>> {
    let mut query = audit_events::table
        .order(audit_events::seq.desc())
        .limit(limit)
        .select(EventRow::as_select())
        .into_boxed();
    if let Some(before) = before {
        query = query.filter(audit_events::seq.lt(before));
    }
    query.load(conn)
}

/// Up to `limit` events with `seq > after`, in order.
pub fn events_after(conn: &mut PgConnection, after: i64, limit: i64) -> QueryResult<Vec<EventRow>> {
    audit_events::table
        .filter(audit_events::seq.gt(after))
        .order(audit_events::seq.asc())
        .limit(limit)
        .select(EventRow::as_select())
        .load(conn)
}

/// Events with `from <= seq <= to`, at most `limit`, in order.
pub fn events_between(
    conn: &mut PgConnection,
    from: i64,
    to: i64,
    limit: i64,
) -> QueryResult<Vec<EventRow>> {
    audit_events::table
        .filter(audit_events::seq.ge(from).and(audit_events::seq.le(to)))
        .order(audit_events::seq.asc())
        .limit(limit)
        .select(EventRow::as_select())
        .load(conn)
}

/// The stored hash of event `seq` (the genesis hash for 0).
pub fn hash_at(conn: &mut PgConnection, seq: i64) -> QueryResult<Option<Vec<u8>>> {
    if seq == 0 {
        return Ok(Some(super::chain::GENESIS.to_vec()));
    }
    audit_events::table
        .filter(audit_events::seq.eq(seq))
        .select(audit_events::hash)
        .first(conn)
        .optional()
}

/// Every checkpoint in the database, in order.
pub fn checkpoints(conn: &mut PgConnection) -> QueryResult<Vec<Checkpoint>> {
    Ok(audit_checkpoints::table
        .order(audit_checkpoints::checkpoint_no.asc())
        .select(CheckpointRow::as_select())
        .load(conn)?
        .iter()
        .map(CheckpointRow::to_checkpoint)
        .collect())
}

/// The sequence range of events that occurred in `[since, until)`.
pub fn seq_range(
    conn: &mut PgConnection,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
) -> QueryResult<Option<(i64, i64)>> {
    let mut q = audit_events::table
        .select((
            diesel::dsl::min(audit_events::seq),
            diesel::dsl::max(audit_events::seq),
        ))
        .into_boxed();
    if let Some(since) = since {
        q = q.filter(audit_events::occurred_at.ge(since));
    }
    if let Some(until) = until {
        q = q.filter(audit_events::occurred_at.lt(until));
    }
    let (lo, hi): (Option<i64>, Option<i64>) = q.first(conn)?;
    Ok(lo.zip(hi))
}
