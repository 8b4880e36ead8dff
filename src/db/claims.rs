//! Claims and their items. The `claims` table has no sealed column yet; every write still
//! records the active data-key version (taken inside the transaction with
//! [`Keyring::sealer_for_write`]) so rotation bookkeeping stays true for the row.

use crate::crypto::Keyring;
use crate::db::observations::scoped;
use crate::db::schema::{claim_items, claims};
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
pub struct ClaimRow {
    pub id: Uuid,
    pub version: i32,
    pub key_version: i32,
    pub patient_id: Uuid,
    pub provider: String,
    pub status: String,
    pub total_cents: i64,
    pub currency: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub struct Claim {
    pub row: ClaimRow,
    pub items: Vec<NewClaimItem>,
}

impl fmt::Debug for Claim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Claim")
            .field("id", &self.row.id)
            .field("version", &self.row.version)
            .finish_non_exhaustive()
    }
}

/// The subject patient of a live claim.
pub fn patient_of(conn: &mut PgConnection, id: Uuid) -> Result<Option<Uuid>, AppError> {
    Ok(claims::table
        .filter(claims::id.eq(id))
        .filter(claims::deleted_at.is_null())
        .select(claims::patient_id)
        .first(conn)
        .optional()?)
}

fn with_items(conn: &mut PgConnection, rows: Vec<ClaimRow>) -> Result<Vec<Claim>, AppError> {
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let items: Vec<(Uuid, i32, String, i64)> = claim_items::table
        .filter(claim_items::claim_id.eq_any(&ids))
        .order((claim_items::claim_id, claim_items::seq))
        .select((
            claim_items::claim_id,
            claim_items::seq,
            claim_items::code,
            claim_items::amount_cents,
        ))
        .load(conn)?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let items = items
                .iter()
                .filter(|i| i.0 == row.id)
                .map(|i| NewClaimItem {
                    seq: i.1,
                    code: i.2.clone(),
                    amount_cents: i.3,
                })
                .collect();
            Claim { row, items }
        })
        .collect())
}

fn insert_items(
    conn: &mut PgConnection,
    claim: Uuid,
    items: &[NewClaimItem],
) -> Result<(), AppError> {
    let rows: Vec<_> = items
        .iter()
        .map(|i| {
            (
                claim_items::id.eq(Uuid::new_v4()),
                claim_items::claim_id.eq(claim),
                claim_items::seq.eq(i.seq),
                claim_items::code.eq(&i.code),
                claim_items::amount_cents.eq(i.amount_cents),
            )
        })
        .collect();
    if !rows.is_empty() {
        diesel::insert_into(claim_items::table)
            .values(rows)
            .execute(conn)?;
    }
    Ok(())
}

/// Inserts a claim and its items in one transaction.
pub fn insert(conn: &mut PgConnection, kr: &Keyring, new: &NewClaim) -> Result<Claim, AppError> {
    let id = Uuid::new_v4();
    conn.transaction(|conn| {
        let sealer = kr.sealer_for_write(conn)?;
        let row = diesel::insert_into(claims::table)
            .values((
                claims::id.eq(id),
                claims::key_version.eq(sealer.version()),
                claims::patient_id.eq(new.patient_id),
                claims::provider.eq(&new.provider),
                claims::status.eq(&new.status),
                claims::total_cents.eq(new.total_cents),
                claims::currency.eq(&new.currency),
            ))
            .returning(ClaimRow::as_returning())
            .get_result::<ClaimRow>(conn)?;
        insert_items(conn, id, &new.items)?;
        Ok(Claim {
            row,
            items: new.items.clone(),
        })
    })
}

/// A live claim with its items.
pub fn get(conn: &mut PgConnection, id: Uuid) -> Result<Option<Claim>, AppError> {
    let row: Option<ClaimRow> = claims::table
        .filter(claims::id.eq(id))
        .filter(claims::deleted_at.is_null())
        .select(ClaimRow::as_select())
        .first(conn)
        .optional()?;
    match row {
        None => Ok(None),
        Some(r) => Ok(with_items(conn, vec![r])?.pop()),
    }
}

/// One page of live claims within `scope`, ordered by id, after `after`.
pub fn search(
    conn: &mut PgConnection,
    patient: Option<Uuid>,
    status: Option<String>,
    scope: SearchScope,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Claim>, AppError> {
    let base = claims::table
        .filter(claims::deleted_at.is_null())
        .into_boxed();
    let mut q = scoped!(conn, base, claims::patient_id, scope);
    if let Some(p) = patient {
        q = q.filter(claims::patient_id.eq(p));
    }
    if let Some(s) = status {
        q = q.filter(claims::status.eq(s));
    }
    if let Some(a) = after {
        q = q.filter(claims::id.gt(a));
    }
    let rows: Vec<ClaimRow> = q
        .order(claims::id)
        .limit(limit)
        .select(ClaimRow::as_select())
        .load(conn)?;
    with_items(conn, rows)
}

/// Replaces a claim and its items (same patient) if its version is still `expected`.
/// `None`: the version no longer matches or the claim is gone.
pub fn update(
    conn: &mut PgConnection,
    kr: &Keyring,
    id: Uuid,
    expected: i32,
    new: &NewClaim,
) -> Result<Option<Claim>, AppError> {
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
            claims::provider.eq(&new.provider),
            claims::status.eq(&new.status),
            claims::total_cents.eq(new.total_cents),
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
        insert_items(conn, id, &new.items)?;
        Ok(Some(Claim {
            row,
            items: new.items.clone(),
        }))
    })
}

/// Soft delete: the claim stays (for the record) but is no longer read or found.
pub fn soft_delete(conn: &mut PgConnection, id: Uuid) -> Result<bool, AppError> {
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
