//! Emergency console accounts in PostgreSQL (`emergency_accounts`): created and disabled
//! by `custodian admin`, looked up by the emergency sign-in.

use crate::console::emergency::{AccountName, ISSUER};
use crate::crypto::Keyring;
use crate::db::schema::{emergency_accounts as ea, users as u};
use crate::db::users::{self, UserKind};
use crate::domain::UserId;
use crate::error::AppError;
use crate::policy::Role;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use uuid::Uuid;
use zeroize::Zeroizing;

/// What `create` made: the account and its TOTP secret for the operator's authenticator.
pub struct Created {
    pub account_id: Uuid,
    pub user_id: UserId,
    pub totp_secret_base32: Zeroizing<String>,
    pub otpauth_uri: Zeroizing<String>,
}

/// Creates the account (with `password_hash` from [`NewPassword::hash`]): its user with
/// the admin role and an unconfirmed TOTP enrolment (confirmed by the first sign-in).
/// Refuses a name that exists, disabled or not.
pub fn create(
    conn: &mut PgConnection,
    keyring: &Keyring,
    name: &AccountName,
    password_hash: &str,
) -> Result<Result<Created, &'static str>, AppError> {
    conn.transaction(|conn| {
        let exists: i64 = ea::table
            .filter(ea::name.eq(name.as_str()))
            .count()
            .get_result(conn)?;
        if exists > 0 {
            return Ok(Err("an emergency account with this name exists already"));
        }
        let user = users::user_for(conn, ISSUER, name.as_str(), UserKind::Person)?;
        users::grant_role(
            conn,
            user.id,
            Role::Admin,
            "emergency access account (custodian admin create-emergency-account)",
            None,
        )?;
        let account_id = Uuid::new_v4();
        diesel::insert_into(ea::table)
            .values((
                ea::id.eq(account_id),
                ea::name.eq(name.as_str()),
                ea::user_id.eq(user.id),
                ea::password_hash.eq(password_hash),
            ))
            .execute(conn)?;
        let enrolment = super::totp::enrolment(conn, keyring, user.id)?;
        let secret = Zeroizing::new(enrolment.secret_base32());
        let uri = Zeroizing::new(crate::console::totp::otpauth_uri(&secret, name.as_str())?);
        Ok(Ok(Created {
            account_id,
            user_id: user.id,
            totp_secret_base32: secret,
            otpauth_uri: uri,
        }))
    })
}

/// Disables (or enables) the account and its user (disabled at `now`); a disabled user's
/// sessions end on their next request. Returns the account id, `None` if there is no such
/// account.
pub fn set_disabled(
    conn: &mut PgConnection,
    name: &AccountName,
    disabled: bool,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<Option<Uuid>, AppError> {
    conn.transaction(|conn| {
        let row: Option<(Uuid, Uuid)> = ea::table
            .filter(ea::name.eq(name.as_str()))
            .select((ea::id, ea::user_id))
            .first(conn)
            .optional()?;
        let Some((id, user_id)) = row else {
            return Ok(None);
        };
        diesel::update(ea::table.find(id))
            .set(ea::disabled_at.eq(disabled.then_some(now)))
            .execute(conn)?;
        users::set_disabled(conn, user_id.into(), disabled, reason, None)?;
        Ok(Some(id))
    })
}

/// The account for a sign-in: (user id, password hash, usable = neither it nor its user
/// is disabled).
pub fn find(
    conn: &mut PgConnection,
    name: &str,
) -> Result<Option<(UserId, String, bool)>, AppError> {
    type Row = (UserId, String, Option<DateTime<Utc>>, Option<DateTime<Utc>>);
    let row: Option<Row> = ea::table
        .inner_join(u::table.on(u::id.eq(ea::user_id)))
        .filter(ea::name.eq(name))
        .select((
            ea::user_id,
            ea::password_hash,
            ea::disabled_at,
            u::disabled_at,
        ))
        .first(conn)
        .optional()?;
    Ok(row.map(|(id, hash, a, b)| (id, hash, a.is_none() && b.is_none())))
}
