//! Claims and their items. Provider, total, item codes and item amounts are sealed (AAD:
//! `claims.<column>` / `claim_items.<column>` of the row id); status, currency and item
//! sequence are coded values kept in clear so that search can filter on them. Every
//! write seals with the active data key taken inside its transaction
//! ([`Keyring::sealer_for_write`]), and items carry their own `key_version` so rotation
//! re-seals them like any other table in [`SEALED_COLUMNS`](crate::db::phi::SEALED_COLUMNS).

use crate::crypto::{Keyring, Phi, Sealer, columns};
use crate::db::phi::open;
use crate::db::schema::{claim_items, claim_items_unsealed, claims, claims_unsealed};
use crate::db::scope::ScopeSql;
use crate::domain::{PatientId, RecordId};
use crate::error::AppError;
use crate::policy::SearchScope;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use std::fmt;
use uuid::Uuid;

#[derive(Clone)]
pub struct NewClaimItem {
    pub seq: i32,
    pub code: String,
    pub amount_cents: i64,
}

/// A claim to create or write. `Debug` shows no PHI.
#[derive(Clone)]
pub struct NewClaim {
    pub patient_id: Uuid,
    pub provider: String,
    pub status: String,
    pub total_cents: i64,
    pub currency: String,
    pub items: Vec<NewClaimItem>,
}

impl fmt::Debug for NewClaim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewClaim")
            .field("patient_id", &self.patient_id)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = claims, check_for_backend(diesel::pg::Pg))]
struct ClaimRow {
    id: Uuid,
    version: i32,
    key_version: i32,
    patient_id: Uuid,
    provider_sealed: Vec<u8>,
    status: String,
    total_sealed: Vec<u8>,
    currency: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// The opened claim (without items). PHI fields are [`Phi`]: `Debug` prints `[redacted]`.
#[derive(Debug)]
pub struct ClaimHead {
    pub id: Uuid,
    pub version: i32,
    pub key_version: i32,
    pub patient_id: Uuid,
    pub provider: Phi<String>,
    pub status: String,
    pub total_cents: Phi<i64>,
    pub currency: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug)]
pub struct ClaimItem {
    pub seq: i32,
    pub code: Phi<String>,
    pub amount_cents: Phi<i64>,
}

#[derive(Debug)]
pub struct Claim {
    pub row: ClaimHead,
    pub items: Vec<ClaimItem>,
}

impl ClaimRow {
    fn open(self, conn: &mut PgConnection, kr: &Keyring) -> Result<ClaimHead, AppError> {
        kr.ensure_version(conn, self.key_version)?;
        Ok(ClaimHead {
            provider: open(
                kr,
                columns::claims::PROVIDER,
                self.id,
                &self.provider_sealed,
            )?,
            total_cents: open(kr, columns::claims::TOTAL, self.id, &self.total_sealed)?,
            id: self.id,
            version: self.version,
            key_version: self.key_version,
            patient_id: self.patient_id,
            status: self.status,
            currency: self.currency,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

/// The subject patient of a live claim.
pub fn patient_of(conn: &mut PgConnection, id: RecordId) -> Result<Option<PatientId>, AppError> {
    Ok(claims::table
        .filter(claims::id.eq(id))
        .filter(claims::deleted_at.is_null())
        .select(claims::patient_id)
        .first(conn)
        .optional()?)
}

type ItemRow = (Uuid, Uuid, i32, i32, Vec<u8>, Vec<u8>);

/// Opens `rows` and, when `items` is set, loads and opens their items (one query).
fn open_all(
    conn: &mut PgConnection,
    kr: &Keyring,
    rows: Vec<ClaimRow>,
    items: bool,
) -> Result<Vec<Claim>, AppError> {
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let item_rows: Vec<ItemRow> = if items && !ids.is_empty() {
        claim_items::table
            .filter(claim_items::claim_id.eq_any(&ids))
            .order((claim_items::claim_id, claim_items::seq))
            .select((
                claim_items::id,
                claim_items::claim_id,
                claim_items::seq,
                claim_items::key_version,
                claim_items::code_sealed,
                claim_items::amount_sealed,
            ))
            .load(conn)?
    } else {
        Vec::new()
    };
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let head = row.open(conn, kr)?;
        let mut items = Vec::new();
        for (id, _, seq, key_version, code, amount) in item_rows.iter().filter(|i| i.1 == head.id) {
            kr.ensure_version(conn, *key_version)?;
            items.push(ClaimItem {
                seq: *seq,
                code: open(kr, columns::claim_items::CODE, *id, code)?,
                amount_cents: open(kr, columns::claim_items::AMOUNT, *id, amount)?,
            });
        }
        out.push(Claim { row: head, items });
    }
    Ok(out)
}

fn insert_items(
    conn: &mut PgConnection,
    sealer: &Sealer,
    claim: Uuid,
    items: &[NewClaimItem],
) -> Result<(), AppError> {
    let mut rows = Vec::with_capacity(items.len());
    for i in items {
        let id = Uuid::new_v4();
        rows.push((
            claim_items::id.eq(id),
            claim_items::claim_id.eq(claim),
            claim_items::seq.eq(i.seq),
            claim_items::key_version.eq(sealer.version()),
            claim_items::code_sealed
                .eq(sealer.seal_str(&columns::claim_items::CODE.at(id), &i.code)?),
            claim_items::amount_sealed
                .eq(sealer.seal_value(&columns::claim_items::AMOUNT.at(id), &i.amount_cents)?),
        ));
    }
    if !rows.is_empty() {
        diesel::insert_into(claim_items::table)
            .values(rows)
            .execute(conn)?;
    }
    Ok(())
}

/// The claim as written, read back from what was sealed (no second query).
fn written(head: ClaimHead, new: &NewClaim) -> Claim {
    Claim {
        row: head,
        items: new
            .items
            .iter()
            .map(|i| ClaimItem {
                seq: i.seq,
                code: Phi::new(i.code.clone()),
                amount_cents: Phi::new(i.amount_cents),
            })
            .collect(),
    }
}

/// Seals and inserts a claim and its items in one transaction, under `id`.
fn insert_with_id(
    conn: &mut PgConnection,
    kr: &Keyring,
    id: Uuid,
    new: &NewClaim,
) -> Result<Claim, AppError> {
    conn.transaction(|conn| {
        let sealer = kr.sealer_for_write(conn)?;
        let row = diesel::insert_into(claims::table)
            .values((
                claims::id.eq(id),
                claims::key_version.eq(sealer.version()),
                claims::patient_id.eq(new.patient_id),
                claims::provider_sealed
                    .eq(sealer.seal_str(&columns::claims::PROVIDER.at(id), &new.provider)?),
                claims::status.eq(&new.status),
                claims::total_sealed
                    .eq(sealer.seal_value(&columns::claims::TOTAL.at(id), &new.total_cents)?),
                claims::currency.eq(&new.currency),
            ))
            .returning(ClaimRow::as_returning())
            .get_result::<ClaimRow>(conn)?;
        insert_items(conn, &sealer, id, &new.items)?;
        Ok(written(row.open(conn, kr)?, new))
    })
}

/// Inserts a claim and its items in one transaction.
pub fn insert(conn: &mut PgConnection, kr: &Keyring, new: &NewClaim) -> Result<Claim, AppError> {
    insert_with_id(conn, kr, Uuid::new_v4(), new)
}

/// A live claim, with its items when `items` is set.
pub fn get(
    conn: &mut PgConnection,
    kr: &Keyring,
    id: Uuid,
    items: bool,
) -> Result<Option<Claim>, AppError> {
    let row: Option<ClaimRow> = claims::table
        .filter(claims::id.eq(id))
        .filter(claims::deleted_at.is_null())
        .select(ClaimRow::as_select())
        .first(conn)
        .optional()?;
    match row {
        None => Ok(None),
        Some(r) => Ok(open_all(conn, kr, vec![r], items)?.pop()),
    }
}

/// Search criteria, AND-ed.
#[derive(Debug, Default)]
pub struct Criteria {
    pub patient: Option<Uuid>,
    pub status: Option<String>,
}

/// One page of live claims within `scope`, ordered by id, after `after`; items are
/// loaded only when `items` is set.
pub fn search(
    conn: &mut PgConnection,
    kr: &Keyring,
    criteria: &Criteria,
    scope: SearchScope,
    after: Option<Uuid>,
    limit: i64,
    items: bool,
) -> Result<Vec<Claim>, AppError> {
    let base = claims::table
        .filter(claims::deleted_at.is_null())
        .into_boxed();
    let mut q = base.filter(ScopeSql::new(scope, "claims.patient_id").expression());
    if let Some(p) = criteria.patient {
        q = q.filter(claims::patient_id.eq(p));
    }
    if let Some(s) = &criteria.status {
        q = q.filter(claims::status.eq(s.clone()));
    }
    if let Some(a) = after {
        q = q.filter(claims::id.gt(a));
    }
    let rows: Vec<ClaimRow> = q
        .order(claims::id)
        .limit(limit)
        .select(ClaimRow::as_select())
        .load(conn)?;
    open_all(conn, kr, rows, items)
}

/// Replaces a claim and its items (same patient), re-sealing everything with the active
/// key, if its version is still `expected`. `None`: the version no longer matches or the
/// claim is gone.
pub fn update(
    conn: &mut PgConnection,
    kr: &Keyring,
    id: RecordId,
    expected: i32,
    new: &NewClaim,
) -> Result<Option<Claim>, AppError> {
    let id = Uuid::from(id);
    conn.transaction(|conn| {
        let sealer = kr.sealer_for_write(conn)?;
        let row: Option<ClaimRow> = diesel::update(
            claims::table.filter(
                claims::id
                    .eq(id)
                    .and(claims::version.eq(expected))
                    .and(claims::patient_id.eq(new.patient_id))
                    .and(claims::deleted_at.is_null()),
            ),
        )
        .set((
            claims::version.eq(expected + 1),
            claims::key_version.eq(sealer.version()),
            claims::provider_sealed
                .eq(sealer.seal_str(&columns::claims::PROVIDER.at(id), &new.provider)?),
            claims::status.eq(&new.status),
            claims::total_sealed
                .eq(sealer.seal_value(&columns::claims::TOTAL.at(id), &new.total_cents)?),
            claims::currency.eq(&new.currency),
            claims::updated_at.eq(Utc::now()),
        ))
        .returning(ClaimRow::as_returning())
        .get_result(conn)
        .optional()?;
        let Some(row) = row else {
            return Ok(None);
        };
        diesel::delete(claim_items::table.filter(claim_items::claim_id.eq(id))).execute(conn)?;
        insert_items(conn, &sealer, id, &new.items)?;
        Ok(Some(written(row.open(conn, kr)?, new)))
    })
}

/// Soft delete: the claim stays (for the record) but is no longer read or found.
pub fn soft_delete(conn: &mut PgConnection, id: RecordId) -> Result<bool, AppError> {
    let n =
        diesel::update(claims::table.filter(claims::id.eq(id).and(claims::deleted_at.is_null())))
            .set((
                claims::deleted_at.eq(Utc::now()),
                claims::version.eq(claims::version + 1),
                claims::updated_at.eq(Utc::now()),
            ))
            .execute(conn)?;
    Ok(n > 0)
}

#[derive(Queryable)]
struct UnsealedRow {
    id: Uuid,
    version: i32,
    patient_id: Uuid,
    provider: String,
    status: String,
    total_cents: i64,
    currency: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    deleted_at: Option<DateTime<Utc>>,
}

/// Seals the claims written before claims were sealed (left in `claims_unsealed` by the
/// migration that introduced sealing) into `claims`, keeping their ids, versions and
/// times, and deletes the clear copies. Batches of 100, each one transaction; rows
/// another instance is sealing are skipped. Returns how many claims were sealed.
pub fn seal_unsealed(conn: &mut PgConnection, kr: &Keyring) -> Result<u64, AppError> {
    let mut sealed = 0u64;
    loop {
        let n = conn.transaction(|conn| -> Result<u64, AppError> {
            let rows: Vec<UnsealedRow> = claims_unsealed::table
                .select((
                    claims_unsealed::id,
                    claims_unsealed::version,
                    claims_unsealed::patient_id,
                    claims_unsealed::provider,
                    claims_unsealed::status,
                    claims_unsealed::total_cents,
                    claims_unsealed::currency,
                    claims_unsealed::created_at,
                    claims_unsealed::updated_at,
                    claims_unsealed::deleted_at,
                ))
                .order(claims_unsealed::id)
                .limit(100)
                .for_update()
                .skip_locked()
                .load(conn)?;
            for r in &rows {
                let items: Vec<(i32, String, i64)> = claim_items_unsealed::table
                    .filter(claim_items_unsealed::claim_id.eq(r.id))
                    .select((
                        claim_items_unsealed::seq,
                        claim_items_unsealed::code,
                        claim_items_unsealed::amount_cents,
                    ))
                    .load(conn)?;
                let new = NewClaim {
                    patient_id: r.patient_id,
                    provider: r.provider.clone(),
                    status: r.status.clone(),
                    total_cents: r.total_cents,
                    currency: r.currency.clone(),
                    items: items
                        .into_iter()
                        .map(|(seq, code, amount_cents)| NewClaimItem {
                            seq,
                            code,
                            amount_cents,
                        })
                        .collect(),
                };
                insert_with_id(conn, kr, r.id, &new)?;
                diesel::update(claims::table.find(r.id))
                    .set((
                        claims::version.eq(r.version),
                        claims::created_at.eq(r.created_at),
                        claims::updated_at.eq(r.updated_at),
                        claims::deleted_at.eq(r.deleted_at),
                    ))
                    .execute(conn)?;
                diesel::delete(
                    claim_items_unsealed::table.filter(claim_items_unsealed::claim_id.eq(r.id)),
                )
                .execute(conn)?;
                diesel::delete(claims_unsealed::table.find(r.id)).execute(conn)?;
            }
            Ok(rows.len() as u64)
        })?;
        if n == 0 {
            return Ok(sealed);
        }
        sealed += n;
    }
}
