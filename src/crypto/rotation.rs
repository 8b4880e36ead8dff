//! Key rotation and key status.
//!
//! - [`rotate_data_keys`]: a new data-key version becomes active for new writes, then
//!   every row of every table in [`SEALED_COLUMNS`] still on an older version is
//!   re-encrypted in batches (one transaction each, `FOR UPDATE SKIP LOCKED`). Progress
//!   derives from the rows' `key_version`, so an interrupted rotation resumes when run
//!   again. A version is retired only when no row uses it.
//! - [`rotate_kek`]: re-wraps every data key under a new key-encryption key, in one
//!   transaction, without touching data rows.

use super::columns::{SEALED_COLUMNS, SealedTable};
use super::keyring::{STATE_ACTIVE, STATE_DECRYPT_ONLY, STATE_RETIRED, generate_key, wrap_context};
use super::{CryptoError, KeyProvider, Keyring};
use crate::schema::data_keys;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bytea, Integer, Nullable, Uuid as SqlUuid};
use std::collections::BTreeMap;
use uuid::Uuid;

/// One data-key version and what it still protects.
#[derive(Clone, Debug)]
pub struct KeyStatus {
    pub version: i32,
    pub state: String,
    pub kek_id: String,
    pub created_at: DateTime<Utc>,
    pub retired_at: Option<DateTime<Utc>>,
    /// Rows whose `key_version` is this version, over all tables.
    pub rows: i64,
    /// Non-null sealed values in those rows.
    pub values: i64,
    /// Per table: (table, rows, values).
    pub tables: Vec<(&'static str, i64, i64)>,
}

#[derive(QueryableByName)]
struct VersionCount {
    #[diesel(sql_type = Integer)]
    key_version: i32,
    #[diesel(sql_type = BigInt)]
    rows: i64,
    #[diesel(sql_type = BigInt)]
    values: i64,
}

fn counts(conn: &mut PgConnection, t: &SealedTable) -> Result<Vec<VersionCount>, CryptoError> {
    let values = if t.columns.is_empty() {
        "0".to_string()
    } else {
        t.columns
            .iter()
            .map(|c| format!("count({c})"))
            .collect::<Vec<_>>()
            .join(" + ")
    };
    Ok(diesel::sql_query(format!(
        "SELECT key_version, count(*)::int8 AS rows, ({values})::int8 AS values FROM {} GROUP BY key_version",
        t.table
    ))
    .load(conn)?)
}

type StoredKeyRow = (i32, String, String, DateTime<Utc>, Option<DateTime<Utc>>);

/// Every data-key version with its state and the rows and values it still protects.
pub fn key_status(conn: &mut PgConnection) -> Result<Vec<KeyStatus>, CryptoError> {
    let keys: Vec<StoredKeyRow> = data_keys::table
        .select((
            data_keys::version,
            data_keys::state,
            data_keys::kek_id,
            data_keys::created_at,
            data_keys::retired_at,
        ))
        .order(data_keys::version)
        .load(conn)?;
    let mut per_version: BTreeMap<i32, Vec<(&'static str, i64, i64)>> = BTreeMap::new();
    for t in SEALED_COLUMNS {
        for c in counts(conn, t)? {
            per_version
                .entry(c.key_version)
                .or_default()
                .push((t.table, c.rows, c.values));
        }
    }
    let mut out: Vec<KeyStatus> = keys
        .into_iter()
        .map(|(version, state, kek_id, created_at, retired_at)| {
            let tables = per_version.remove(&version).unwrap_or_default();
            KeyStatus {
                version,
                state,
                kek_id,
                created_at,
                retired_at,
                rows: tables.iter().map(|t| t.1).sum(),
                values: tables.iter().map(|t| t.2).sum(),
                tables,
            }
        })
        .collect();
    // Rows sealed with a version the key store does not know: loud, not hidden.
    for (version, tables) in per_version {
        out.push(KeyStatus {
            version,
            state: "missing".into(),
            kek_id: String::new(),
            created_at: DateTime::<Utc>::MIN_UTC,
            retired_at: None,
            rows: tables.iter().map(|t| t.1).sum(),
            values: tables.iter().map(|t| t.2).sum(),
            tables,
        });
    }
    Ok(out)
}

#[derive(Clone, Copy, Debug)]
pub struct RotateOptions {
    /// Rows per batch (one transaction each).
    pub batch_size: i64,
    /// Stop after this many batches (the rest is done by running rotate again).
    pub max_batches: Option<u64>,
}

impl Default for RotateOptions {
    fn default() -> Self {
        RotateOptions {
            batch_size: 500,
            max_batches: None,
        }
    }
}

/// Progress of one table, reported after every batch.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    pub table: &'static str,
    pub done: u64,
    pub total: u64,
    pub active_version: i32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RotationReport {
    pub active_version: i32,
    /// False when an unfinished rotation was resumed instead of starting a new version.
    pub started_new_version: bool,
    pub rows_reencrypted: u64,
    /// True when no row uses an older version any more.
    pub complete: bool,
    pub retired: Vec<i32>,
}

/// What a rotation did, for whoever must say so in the same transaction (the CLI's webhook
/// message: the outbox lives above this module, so it comes in as a callback).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rotated {
    /// A new data-key version became active.
    DataKey { version: i32 },
    /// This many data keys were re-wrapped under a new key-encryption key.
    Kek { rewrapped: u64 },
}

/// A callback run inside a rotation's transaction, after the change and before the
/// commit: if it fails, the rotation is rolled back; if the rotation fails, what it
/// wrote is rolled back with it.
pub type OnRotated<'a> = &'a mut dyn FnMut(&mut PgConnection, Rotated) -> Result<(), CryptoError>;

/// Starts a new data-key version (unless a rotation is unfinished) and re-encrypts every
/// row on an older version; see the module docs.
pub fn rotate_data_keys(
    conn: &mut PgConnection,
    keyring: &Keyring,
    options: RotateOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<RotationReport, CryptoError> {
    rotate_data_keys_with(conn, keyring, options, progress, &mut |_, _| Ok(()))
}

/// [`rotate_data_keys`] with `on_rotated` run in the transaction that starts the new
/// version (not on a resumed rotation).
pub fn rotate_data_keys_with(
    conn: &mut PgConnection,
    keyring: &Keyring,
    options: RotateOptions,
    progress: &mut dyn FnMut(Progress),
    on_rotated: OnRotated<'_>,
) -> Result<RotationReport, CryptoError> {
    let (active, started_new_version) = begin_rotation(conn, keyring, on_rotated)?;
    keyring.refresh(conn)?;
    let sealer = keyring.sealer()?;
    if sealer.version() != active {
        return Err(CryptoError::Internal(
            "keyring did not pick up the new active key",
        ));
    }
    let batch_size = options.batch_size.max(1);
    let mut batches = 0u64;
    let mut rows_reencrypted = 0u64;
    let mut stopped_early = false;
    'tables: for t in SEALED_COLUMNS {
        let total: i64 = diesel::sql_query(format!(
            "SELECT count(*)::int8 AS rows, 0::int8 AS values, 0 AS key_version FROM {} WHERE key_version <> $1",
            t.table
        ))
        .bind::<Integer, _>(active)
        .get_result::<VersionCount>(conn)?
        .rows;
        let total = u64::try_from(total).unwrap_or(0);
        let mut done = 0u64;
        if total == 0 {
            continue;
        }
        loop {
            if options.max_batches.is_some_and(|m| batches >= m) {
                stopped_early = true;
                break 'tables;
            }
            let n =
                conn.transaction(|conn| reencrypt_batch(conn, keyring, &sealer, t, batch_size))?;
            batches += 1;
            if n == 0 {
                break;
            }
            done += n;
            rows_reencrypted += n;
            progress(Progress {
                table: t.table,
                done,
                total,
                active_version: active,
            });
        }
    }
    let retired = if stopped_early {
        Vec::new()
    } else {
        retire_unused(conn)?
    };
    let remaining: i64 = key_status(conn)?
        .iter()
        .filter(|k| k.version != active)
        .map(|k| k.rows)
        .sum();
    Ok(RotationReport {
        active_version: active,
        started_new_version,
        rows_reencrypted,
        complete: remaining == 0,
        retired,
    })
}

/// Creates and activates a new data-key version, unless some version is still
/// `decrypt_only` (an unfinished rotation), in which case that rotation is resumed.
fn begin_rotation(
    conn: &mut PgConnection,
    keyring: &Keyring,
    on_rotated: OnRotated<'_>,
) -> Result<(i32, bool), CryptoError> {
    conn.transaction(|conn| {
        // Self-conflicting, and it lets writers' FOR SHARE locks through; the UPDATE
        // below then waits for writes in flight under the old active key.
        diesel::sql_query("LOCK TABLE data_keys IN SHARE ROW EXCLUSIVE MODE").execute(conn)?;
        let unfinished: i64 = data_keys::table
            .filter(data_keys::state.eq(STATE_DECRYPT_ONLY))
            .count()
            .get_result(conn)?;
        let active: Option<i32> = data_keys::table
            .filter(data_keys::state.eq(STATE_ACTIVE))
            .select(data_keys::version)
            .first(conn)
            .optional()?;
        if let (true, Some(active)) = (unfinished > 0, active) {
            return Ok((active, false));
        }
        let max: Option<i32> = data_keys::table
            .select(diesel::dsl::max(data_keys::version))
            .first(conn)?;
        let version = max.unwrap_or(0) + 1;
        let key = generate_key();
        let provider = keyring.primary_provider();
        let wrapped = provider.wrap_key(&key, &wrap_context(version))?;
        diesel::update(data_keys::table.filter(data_keys::state.eq(STATE_ACTIVE)))
            .set(data_keys::state.eq(STATE_DECRYPT_ONLY))
            .execute(conn)?;
        diesel::insert_into(data_keys::table)
            .values((
                data_keys::version.eq(version),
                data_keys::wrapped_key.eq(wrapped),
                data_keys::kek_id.eq(provider.key_id()),
                data_keys::state.eq(STATE_ACTIVE),
                data_keys::activated_at.eq(diesel::dsl::now),
            ))
            .execute(conn)?;
        on_rotated(conn, Rotated::DataKey { version })?;
        Ok((version, true))
    })
}

#[derive(QueryableByName)]
struct BatchRow {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = Array<Nullable<Bytea>>)]
    sealed: Vec<Option<Vec<u8>>>,
}

/// Re-seals up to `limit` rows of `t` that are not on the sealer's version: one SELECT
/// (rows locked, locked rows skipped) and one UPDATE of all sealed columns and
/// `key_version`. Returns how many rows moved. Runs inside the caller's transaction.
fn reencrypt_batch(
    conn: &mut PgConnection,
    keyring: &Keyring,
    sealer: &super::Sealer,
    t: &SealedTable,
    limit: i64,
) -> Result<u64, CryptoError> {
    let columns = t
        .columns
        .iter()
        .map(|c| c.column)
        .collect::<Vec<_>>()
        .join(", ");
    let rows: Vec<BatchRow> = diesel::sql_query(format!(
        "SELECT id, ARRAY[{columns}]::bytea[] AS sealed FROM {} WHERE key_version <> $1 ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED",
        t.table
    ))
    .bind::<Integer, _>(sealer.version())
    .bind::<BigInt, _>(limit)
    .load(conn)?;
    if rows.is_empty() {
        return Ok(0);
    }
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    // Column-major: one array per sealed column, aligned with `ids`.
    let mut new_values: Vec<Vec<Option<Vec<u8>>>> =
        vec![Vec::with_capacity(rows.len()); t.columns.len()];
    for row in rows {
        if row.sealed.len() != t.columns.len() {
            return Err(CryptoError::Internal(
                "unexpected column count in rotation batch",
            ));
        }
        for (i, (column, sealed)) in t.columns.iter().zip(row.sealed).enumerate() {
            let resealed = match sealed {
                Some(sealed) => {
                    let place = column.at(row.id);
                    let plain = keyring.open(&place, &sealed)?;
                    Some(sealer.seal(&place, &plain)?)
                }
                None => None,
            };
            new_values[i].push(resealed);
        }
    }
    let set: String = t.columns.iter().map(|c| format!("{c} = u.{c}, ")).collect();
    let unnest: String = t
        .columns
        .iter()
        .enumerate()
        .map(|(i, _)| format!(", ${}::bytea[]", i + 3))
        .collect();
    let mut query = diesel::sql_query(format!(
        "UPDATE {table} AS t SET {set}key_version = $1 FROM unnest($2::uuid[]{unnest}) AS u(id{names}) WHERE t.id = u.id",
        table = t.table,
        names = t.columns.iter().map(|c| format!(", {c}")).collect::<String>(),
    ))
    .into_boxed::<diesel::pg::Pg>()
    .bind::<Integer, _>(sealer.version())
    .bind::<Array<SqlUuid>, _>(ids);
    for values in new_values {
        query = query.bind::<Array<Nullable<Bytea>>, _>(values);
    }
    Ok(query.execute(conn)? as u64)
}

/// Retires every `decrypt_only` version that no row uses any more.
fn retire_unused(conn: &mut PgConnection) -> Result<Vec<i32>, CryptoError> {
    conn.transaction(|conn| {
        diesel::sql_query("LOCK TABLE data_keys IN SHARE ROW EXCLUSIVE MODE").execute(conn)?;
        let candidates: Vec<i32> = data_keys::table
            .filter(data_keys::state.eq(STATE_DECRYPT_ONLY))
            .select(data_keys::version)
            .load(conn)?;
        let status = key_status(conn)?;
        let mut retired = Vec::new();
        for v in candidates {
            let in_use = status.iter().find(|k| k.version == v).map_or(0, |k| k.rows);
            if in_use == 0 {
                diesel::update(data_keys::table.filter(data_keys::version.eq(v)))
                    .set((
                        data_keys::state.eq(STATE_RETIRED),
                        data_keys::retired_at.eq(diesel::dsl::now),
                    ))
                    .execute(conn)?;
                retired.push(v);
            }
        }
        Ok(retired)
    })
}

/// Re-wraps every data key (any state) under `new_kek`, in one transaction. Data rows
/// are untouched. Keys already under `new_kek` are skipped, so re-running is safe.
/// Returns how many keys were re-wrapped.
pub fn rotate_kek(
    conn: &mut PgConnection,
    keyring: &Keyring,
    new_kek: &dyn KeyProvider,
) -> Result<u64, CryptoError> {
    rotate_kek_with(conn, keyring, new_kek, &mut |_, _| Ok(()))
}

/// [`rotate_kek`] with `on_rotated` run in its transaction when it re-wrapped any key.
pub fn rotate_kek_with(
    conn: &mut PgConnection,
    keyring: &Keyring,
    new_kek: &dyn KeyProvider,
    on_rotated: OnRotated<'_>,
) -> Result<u64, CryptoError> {
    conn.transaction(|conn| {
        diesel::sql_query("LOCK TABLE data_keys IN SHARE ROW EXCLUSIVE MODE").execute(conn)?;
        let rows: Vec<(i32, Vec<u8>, String)> = data_keys::table
            .select((data_keys::version, data_keys::wrapped_key, data_keys::kek_id))
            .order(data_keys::version)
            .for_update()
            .load(conn)?;
        let mut n = 0u64;
        for (version, wrapped, kek_id) in rows {
            if kek_id == new_kek.key_id() {
                continue;
            }
            let provider = keyring.provider(&kek_id).ok_or_else(|| CryptoError::Config {
                setting: "crypto.kek",
                problem: format!("is not the key-encryption key that wrapped data key version {version} (stored KEK id {kek_id})"),
            })?;
            let context = wrap_context(version);
            let key = provider.unwrap_key(&wrapped, &context).map_err(|_| CryptoError::Config {
                setting: "crypto.kek",
                problem: format!("cannot unwrap data key version {version}"),
            })?;
            let rewrapped = new_kek.wrap_key(&key, &context)?;
            diesel::update(data_keys::table.filter(data_keys::version.eq(version)))
                .set((
                    data_keys::wrapped_key.eq(rewrapped),
                    data_keys::kek_id.eq(new_kek.key_id()),
                    data_keys::rewrapped_at.eq(diesel::dsl::now),
                ))
                .execute(conn)?;
            n += 1;
        }
        if n > 0 {
            on_rotated(conn, Rotated::Kek { rewrapped: n })?;
        }
        Ok(n)
    })
}
