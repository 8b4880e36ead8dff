//! Console recovery codes in PostgreSQL (`console_recovery_codes`): argon2id hashes only,
//! each used once.

use crate::console::recovery::{NewCode, SELECTOR_LEN, normalise};
use crate::crypto::password;
use crate::db::schema::console_recovery_codes as rc;
use crate::domain::UserId;
use crate::error::AppError;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use uuid::Uuid;

/// Replaces the user's codes with `codes` (earlier codes, used or not, stop working).
pub fn replace(
    conn: &mut PgConnection,
    user_id: UserId,
    codes: &[NewCode],
) -> Result<(), AppError> {
    conn.transaction(|conn| {
        diesel::delete(rc::table.filter(rc::user_id.eq(user_id))).execute(conn)?;
        for c in codes {
            diesel::insert_into(rc::table)
                .values((
                    rc::id.eq(Uuid::new_v4()),
                    rc::user_id.eq(user_id),
                    rc::selector.eq(&c.selector),
                    rc::code_hash.eq(&c.hash),
                ))
                .execute(conn)?;
        }
        Ok(())
    })
}

/// Uses up the user's code `input` if it is one of their unused codes (marked used at
/// `now`). Runs one argon2 verification (none when no code has that selector).
pub fn redeem(
    conn: &mut PgConnection,
    user_id: UserId,
    input: &str,
    now: DateTime<Utc>,
) -> Result<bool, AppError> {
    let Some(code) = normalise(input) else {
        return Ok(false);
    };
    let row: Option<(Uuid, String)> = rc::table
        .filter(
            rc::user_id
                .eq(user_id)
                .and(rc::selector.eq(&code[..SELECTOR_LEN]))
                .and(rc::used_at.is_null()),
        )
        .select((rc::id, rc::code_hash))
        .first(conn)
        .optional()?;
    let Some((id, hash)) = row else {
        return Ok(false);
    };
    if !password::verify(code.as_bytes(), &hash) {
        return Ok(false);
    }
    // Single use even against a concurrent request with the same code.
    let used = diesel::update(rc::table.filter(rc::id.eq(id).and(rc::used_at.is_null())))
        .set(rc::used_at.eq(Some(now)))
        .execute(conn)?;
    Ok(used == 1)
}

/// How many unused codes the user has left.
pub fn remaining(conn: &mut PgConnection, user_id: UserId) -> Result<i64, AppError> {
    Ok(rc::table
        .filter(rc::user_id.eq(user_id).and(rc::used_at.is_null()))
        .count()
        .get_result(conn)?)
}
