//! Console TOTP enrolments in PostgreSQL (`console_totp`): the sealed secret, the last
//! accepted step (no code twice), failures and the lock-out.

use crate::console::totp::{Check, Enrolment, MAX_FAILURES, lockout_for, matching_step};
use crate::crypto::{FieldPlace, Keyring};
use crate::db::schema::console_totp as ct;
use crate::domain::UserId;
use crate::error::AppError;
use chrono::{DateTime, Duration, Utc};
use diesel::prelude::*;
use rand::RngCore;
use uuid::Uuid;
use zeroize::Zeroizing;

fn place(row: Uuid) -> FieldPlace {
    crate::crypto::columns::console_totp::SECRET.at(row)
}

type Row = (
    Uuid,
    Vec<u8>,
    Option<DateTime<Utc>>,
    Option<i64>,
    i32,
    Option<DateTime<Utc>>,
    i32,
);

/// The user's enrolment, created (unconfirmed, with a fresh 160-bit secret) if missing.
/// Locks the row for the rest of the transaction.
pub fn enrolment(
    conn: &mut PgConnection,
    keyring: &Keyring,
    user_id: UserId,
) -> Result<Enrolment, AppError> {
    let load = |conn: &mut PgConnection| -> Result<Option<Row>, AppError> {
        Ok(ct::table
            .filter(ct::user_id.eq(user_id))
            .select((
                ct::id,
                ct::secret_sealed,
                ct::confirmed_at,
                ct::last_step,
                ct::failures,
                ct::locked_until,
                ct::lockouts,
            ))
            .for_update()
            .first(conn)
            .optional()?)
    };
    let row = match load(conn)? {
        Some(row) => row,
        None => {
            let id = Uuid::new_v4();
            let mut secret = Zeroizing::new(vec![0u8; 20]);
            rand::rngs::OsRng.fill_bytes(&mut secret);
            let sealer = keyring.sealer_for_write(conn)?;
            let sealed = sealer.seal(&place(id), &secret)?;
            diesel::insert_into(ct::table)
                .values((
                    ct::id.eq(id),
                    ct::user_id.eq(user_id),
                    ct::secret_sealed.eq(sealed),
                    ct::key_version.eq(sealer.version()),
                ))
                .on_conflict(ct::user_id)
                .do_nothing()
                .execute(conn)?;
            load(conn)?.ok_or_else(|| AppError::internal("TOTP row vanished after insert"))?
        }
    };
    let secret = keyring.open(&place(row.0), &row.1)?;
    Ok(Enrolment {
        id: row.0,
        secret,
        confirmed: row.2.is_some(),
        last_step: row.3,
        failures: row.4,
        locked_until: row.5,
        lockouts: row.6,
    })
}

/// The user's enrolment, `None` while the check is locked at `now`.
fn unlocked(
    conn: &mut PgConnection,
    keyring: &Keyring,
    user_id: UserId,
    now: DateTime<Utc>,
) -> Result<Option<Enrolment>, AppError> {
    let e = enrolment(conn, keyring, user_id)?;
    Ok(e.locked_until.is_none_or(|until| until <= now).then_some(e))
}

/// Checks `code` for the user at `now` (the app's clock; inside a transaction), recording
/// the accepted step or the failure. Confirms an unconfirmed enrolment on success.
pub fn check(
    conn: &mut PgConnection,
    keyring: &Keyring,
    user_id: UserId,
    code: &str,
    lockout: Duration,
    now: DateTime<Utc>,
) -> Result<Check, AppError> {
    let Some(e) = unlocked(conn, keyring, user_id, now)? else {
        return Ok(Check::Locked);
    };
    let now_secs = u64::try_from(now.timestamp()).unwrap_or(0);
    let step = matching_step(&e.secret, code, now_secs, e.last_step)?;
    settle(conn, &e, step.map(Some), now, lockout)
}

/// Checks a recovery code in place of a TOTP code (inside a transaction): only for a
/// confirmed enrolment, under the same lock-out, and a wrong one counts as a failure.
pub fn check_recovery(
    conn: &mut PgConnection,
    keyring: &Keyring,
    user_id: UserId,
    code: &str,
    lockout: Duration,
    now: DateTime<Utc>,
) -> Result<Check, AppError> {
    let Some(e) = unlocked(conn, keyring, user_id, now)? else {
        return Ok(Check::Locked);
    };
    let ok = e.confirmed && super::recovery::redeem(conn, user_id, code, now)?;
    settle(conn, &e, ok.then_some(None), now, lockout)
}

/// Enrols the user with a given secret, confirmed at `now`, unless an enrolment exists
/// (then nothing changes). For `custodian dev`'s pre-enrolled demo people; returns
/// whether it enrolled.
pub fn enrol_confirmed(
    conn: &mut PgConnection,
    keyring: &Keyring,
    user_id: UserId,
    secret: &[u8],
    now: DateTime<Utc>,
) -> Result<bool, AppError> {
    let id = Uuid::new_v4();
    let sealer = keyring.sealer_for_write(conn)?;
    let sealed = sealer.seal(&place(id), secret)?;
    let inserted = diesel::insert_into(ct::table)
        .values((
            ct::id.eq(id),
            ct::user_id.eq(user_id),
            ct::secret_sealed.eq(sealed),
            ct::key_version.eq(sealer.version()),
            ct::confirmed_at.eq(Some(now)),
        ))
        .on_conflict(ct::user_id)
        .do_nothing()
        .execute(conn)?;
    Ok(inserted == 1)
}

/// Whether the user has confirmed a TOTP enrolment.
pub fn is_confirmed(conn: &mut PgConnection, user_id: UserId) -> Result<bool, AppError> {
    let at: Option<Option<DateTime<Utc>>> = ct::table
        .filter(ct::user_id.eq(user_id))
        .select(ct::confirmed_at)
        .first(conn)
        .optional()?;
    Ok(at.flatten().is_some())
}

/// Records the result: `Some(step)` accepted (a TOTP step to remember, or `None` for a
/// recovery code), `None` a failure, which after [`MAX_FAILURES`] starts a lock-out
/// (doubling with each lock-out in a row; an accepted code resets the count).
fn settle(
    conn: &mut PgConnection,
    e: &Enrolment,
    accepted: Option<Option<i64>>,
    now: DateTime<Utc>,
    lockout: Duration,
) -> Result<Check, AppError> {
    match accepted {
        Some(step) => {
            diesel::update(ct::table.filter(ct::id.eq(e.id)))
                .set((
                    ct::last_step.eq(step.or(e.last_step)),
                    ct::failures.eq(0),
                    ct::locked_until.eq(None::<DateTime<Utc>>),
                    ct::lockouts.eq(0),
                    ct::confirmed_at.eq(Some(now)),
                ))
                .execute(conn)?;
            Ok(Check::Accepted)
        }
        None => {
            let failures = e.failures + 1;
            let locked = failures >= MAX_FAILURES;
            // Each lock-out before the next accepted code is twice as long as the last.
            let (failures, until, lockouts) = if locked {
                let span = lockout_for(lockout, e.lockouts);
                (0, Some(now + span), e.lockouts.saturating_add(1))
            } else {
                (failures, None, e.lockouts)
            };
            diesel::update(ct::table.filter(ct::id.eq(e.id)))
                .set((
                    ct::failures.eq(failures),
                    ct::locked_until.eq(until),
                    ct::lockouts.eq(lockouts),
                ))
                .execute(conn)?;
            Ok(Check::Rejected { locked })
        }
    }
}
