//! Claims and their items. Provider, total, item codes and item amounts are sealed (AAD:
//! `claims.<column>` / `claim_items.<column>` of the row id); status, currency and item
//! sequence are coded values kept in clear so that search can filter on them. Every
//! write seals with the active data key taken inside its transaction
//! ([`Keyring::sealer_for_write`]), and items carry their own `key_version` so rotation
//! re-seals them like any other table in [`SEALED_COLUMNS`](crate::crypto::columns::SEALED_COLUMNS).

use crate::crypto::{Keyring, Phi, Sealer, columns};
use crate::db::phi::open;
use crate::db::records::{self, RecordTable, Shapes};
use crate::db::schema::{claim_items, claim_items_unsealed, claims, claims_unsealed};
use crate::domain::{PatientId, RecordId};
use crate::error::AppError;
use chrono::{DateTime, Utc};
use diesel::pg::Pg;
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
    pub patient_id: PatientId,
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
pub struct ClaimRow {
    id: Uuid,
    version: i32,
    key_version: i32,
    patient_id: PatientId,
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
    pub patient_id: PatientId,
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

#[derive(Insertable, AsChangeset)]
#[diesel(table_name = claims)]
pub struct ClaimWrite {
    key_version: i32,
    #[diesel(skip_update)]
    patient_id: PatientId,
    provider_sealed: Vec<u8>,
    status: String,
    total_sealed: Vec<u8>,
    currency: String,
}

type ItemRow = (Uuid, Uuid, i32, i32, Vec<u8>, Vec<u8>);

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

/// Search criteria, AND-ed.
#[derive(Debug, Default)]
pub struct Criteria {
    pub patient: Option<Uuid>,
    /// Any of these statuses (a comma-separated list is an OR).
    pub status: Vec<String>,
}

/// The `claims` repository (with its items). Its fields: whether to load the items.
pub struct ClaimTable;

impl Shapes for ClaimTable {
    type Row = ClaimRow;
    type Write = ClaimWrite;
    type New = NewClaim;
    type Record = Claim;

    fn seal(new: &NewClaim, sealer: &Sealer, id: Uuid) -> Result<ClaimWrite, AppError> {
        use columns::claims::{PROVIDER, TOTAL};
        Ok(ClaimWrite {
            key_version: sealer.version(),
            patient_id: new.patient_id,
            provider_sealed: sealer.seal_str(&PROVIDER.at(id), &new.provider)?,
            status: new.status.clone(),
            total_sealed: sealer.seal_value(&TOTAL.at(id), &new.total_cents)?,
            currency: new.currency.clone(),
        })
    }

    /// The claim without its items ([`Self::load`] and [`Self::write_more`] add them).
    fn open(row: ClaimRow, kr: &Keyring) -> Result<Claim, AppError> {
        use columns::claims::{PROVIDER, TOTAL};
        let head = ClaimHead {
            provider: open(kr, PROVIDER, row.id, &row.provider_sealed)?,
            total_cents: open(kr, TOTAL, row.id, &row.total_sealed)?,
            id: row.id,
            version: row.version,
            key_version: row.key_version,
            patient_id: row.patient_id,
            status: row.status,
            currency: row.currency,
            created_at: row.created_at,
            updated_at: row.updated_at,
        };
        Ok(Claim {
            row: head,
            items: Vec::new(),
        })
    }

    fn updated_at(claim: &Claim) -> DateTime<Utc> {
        claim.row.updated_at
    }
}

impl RecordTable for ClaimTable {
    type Criteria = Criteria;
    type Fields = bool;
    type Query = claims::BoxedQuery<'static, Pg>;

    fn filter(mut q: Self::Query, criteria: &Criteria) -> Self::Query {
        if let Some(p) = criteria.patient {
            q = q.filter(claims::patient_id.eq(p));
        }
        if !criteria.status.is_empty() {
            q = q.filter(claims::status.eq_any(criteria.status.clone()));
        }
        q
    }

    /// A claim's items belong to every version.
    fn all_fields() -> bool {
        true
    }

    /// The items of every claim, when `items` is set (one query).
    fn load(
        conn: &mut PgConnection,
        kr: &Keyring,
        claims: &mut [Claim],
        items: bool,
    ) -> Result<(), AppError> {
        let ids: Vec<Uuid> = claims.iter().map(|c| c.row.id).collect();
        if !items || ids.is_empty() {
            return Ok(());
        }
        let item_rows: Vec<ItemRow> = claim_items::table
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
            .load(conn)?;
        for claim in claims {
            for (id, _, seq, key_version, code, amount) in
                item_rows.iter().filter(|i| i.1 == claim.row.id)
            {
                kr.ensure_version(conn, *key_version)?;
                claim.items.push(ClaimItem {
                    seq: *seq,
                    code: open(kr, columns::claim_items::CODE, *id, code)?,
                    amount_cents: open(kr, columns::claim_items::AMOUNT, *id, amount)?,
                });
            }
        }
        Ok(())
    }

    /// Writes the items (replacing the old ones on an update); the claim as written is
    /// read back from what was sealed (no second query).
    fn write_more(
        conn: &mut PgConnection,
        sealer: &Sealer,
        claim: &mut Claim,
        new: &NewClaim,
        replace: bool,
    ) -> Result<(), AppError> {
        let id = claim.row.id;
        if replace {
            diesel::delete(claim_items::table.filter(claim_items::claim_id.eq(id)))
                .execute(conn)?;
        }
        insert_items(conn, sealer, id, &new.items)?;
        claim.items = new
            .items
            .iter()
            .map(|i| ClaimItem {
                seq: i.seq,
                code: Phi::new(i.code.clone()),
                amount_cents: Phi::new(i.amount_cents),
            })
            .collect();
        Ok(())
    }
}

records::statements!(ClaimTable, claims, head = row);

/// Inserts a claim and its items in one transaction.
pub fn insert(conn: &mut PgConnection, kr: &Keyring, new: &NewClaim) -> Result<Claim, AppError> {
    records::insert::<ClaimTable>(conn, kr, new)
}

/// A live claim, with its items when `items` is set.
pub fn get(
    conn: &mut PgConnection,
    kr: &Keyring,
    id: Uuid,
    items: bool,
) -> Result<Option<Claim>, AppError> {
    records::get::<ClaimTable>(conn, kr, RecordId(id), items)
}

#[derive(Queryable)]
struct UnsealedRow {
    id: Uuid,
    version: i32,
    patient_id: PatientId,
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
                records::insert_with_id::<ClaimTable>(conn, kr, r.id, &new)?;
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
