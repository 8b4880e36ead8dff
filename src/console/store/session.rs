//! Console sessions in PostgreSQL (`console_sessions`): load with the idle and absolute
//! timeouts, start, advance to a new id, end, list and sweep.
//!
//! Every function that decides by time, or writes a time a later decision compares
//! against, takes `now` from the caller (the app's clock, `AppState::clock`): the
//! database's own `now()` is never used, so a test's clock moves sessions too.

use crate::console::session::{Lifetimes, Session, Stage, hash, random_token};
use crate::db::schema::console_sessions as cs;
use crate::domain::UserId;
use crate::error::AppError;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use uuid::Uuid;

type Row = (
    Vec<u8>,
    String,
    Option<Uuid>,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    DateTime<Utc>,
    DateTime<Utc>,
);

/// How long a pre-login session (state, nonce and PKCE verifier, no authority) lives: the
/// time to sign in at the provider, much shorter than a signed-in session.
pub const PRE_LOGIN_MAX_AGE_SECS: i64 = 600;
/// Most live pre-login sessions one source address may hold at once.
pub const PRE_LOGIN_PER_ADDRESS: i64 = 20;

fn pre_login_cutoff(now: DateTime<Utc>) -> DateTime<Utc> {
    now - chrono::Duration::seconds(PRE_LOGIN_MAX_AGE_SECS)
}

/// Loads the live session for `id`, refreshing its idle timer; an expired one is deleted.
pub fn load(
    conn: &mut PgConnection,
    id: &str,
    life: &Lifetimes,
    now: DateTime<Utc>,
) -> Result<Option<Session>, AppError> {
    let id_hash = hash(id);
    let row: Option<Row> = diesel::update(
        cs::table.filter(
            cs::id_hash
                .eq(&id_hash)
                .and(cs::last_seen_at.gt(now - life.idle))
                .and(cs::created_at.gt(now - life.absolute))
                .and(
                    cs::stage
                        .ne(Stage::PreLogin.as_str())
                        .or(cs::created_at.gt(pre_login_cutoff(now))),
                ),
        ),
    )
    .set(cs::last_seen_at.eq(now))
    .returning((
        cs::id_hash,
        cs::stage,
        cs::user_id,
        cs::csrf_token,
        cs::oidc_state,
        cs::oidc_nonce,
        cs::pkce_verifier,
        cs::created_at,
        cs::last_seen_at,
    ))
    .get_result(conn)
    .optional()?;
    let Some(r) = row else {
        diesel::delete(cs::table.filter(cs::id_hash.eq(&id_hash))).execute(conn)?;
        return Ok(None);
    };
    let stage = Stage::parse(&r.1).ok_or_else(|| AppError::internal("unknown session stage"))?;
    Ok(Some(Session {
        id_hash: r.0,
        stage,
        user_id: r.2,
        csrf_token: r.3,
        oidc_state: r.4,
        oidc_nonce: r.5,
        pkce_verifier: r.6,
        created_at: r.7,
        last_seen_at: r.8,
    }))
}

/// Starts a pre-login session holding the OIDC state, nonce and PKCE verifier for a
/// browser at `source` (its address); returns the new session id (for the cookie), or
/// `None` when `source` already holds [`PRE_LOGIN_PER_ADDRESS`] live ones. Expired
/// sessions of anyone are swept here, so unauthenticated requests cannot grow the table
/// beyond that bound per address.
pub fn start_pre_login(
    conn: &mut PgConnection,
    life: &Lifetimes,
    pre_login: (&str, &str, &str),
    source: &str,
    now: DateTime<Utc>,
) -> Result<Option<String>, AppError> {
    let (state, nonce, verifier) = pre_login;
    sweep(conn, life, now)?;
    let held: i64 = cs::table
        .filter(
            cs::stage
                .eq(Stage::PreLogin.as_str())
                .and(cs::source_addr.eq(source)),
        )
        .count()
        .get_result(conn)?;
    if held >= PRE_LOGIN_PER_ADDRESS {
        return Ok(None);
    }
    let id = random_token();
    diesel::insert_into(cs::table)
        .values((
            cs::id_hash.eq(hash(&id)),
            cs::stage.eq(Stage::PreLogin.as_str()),
            cs::csrf_token.eq(random_token()),
            cs::oidc_state.eq(state),
            cs::oidc_nonce.eq(nonce),
            cs::pkce_verifier.eq(verifier),
            cs::source_addr.eq(source),
            cs::created_at.eq(now),
            cs::last_seen_at.eq(now),
        ))
        .execute(conn)?;
    Ok(Some(id))
}

/// A new session for a user who just signed in with OIDC (a fresh id, never the
/// pre-login one). Returns the new id.
pub fn start_signed_in(
    conn: &mut PgConnection,
    stage: Stage,
    user_id: UserId,
    now: DateTime<Utc>,
) -> Result<String, AppError> {
    let id = random_token();
    diesel::insert_into(cs::table)
        .values((
            cs::id_hash.eq(hash(&id)),
            cs::stage.eq(stage.as_str()),
            cs::user_id.eq(Some(user_id)),
            cs::csrf_token.eq(random_token()),
            cs::created_at.eq(now),
            cs::last_seen_at.eq(now),
        ))
        .execute(conn)?;
    Ok(id)
}

/// Moves a session to `stage` for `user_id` under a new id and a new CSRF token; the old
/// id stops working at once, the OIDC values are erased. Returns the new id.
pub fn advance(
    conn: &mut PgConnection,
    old_hash: &[u8],
    stage: Stage,
    user_id: UserId,
    now: DateTime<Utc>,
) -> Result<String, AppError> {
    let id = random_token();
    let changed = diesel::update(cs::table.filter(cs::id_hash.eq(old_hash)))
        .set((
            cs::id_hash.eq(hash(&id)),
            cs::stage.eq(stage.as_str()),
            cs::user_id.eq(Some(user_id)),
            cs::csrf_token.eq(random_token()),
            cs::oidc_state.eq(None::<String>),
            cs::oidc_nonce.eq(None::<String>),
            cs::pkce_verifier.eq(None::<String>),
            // Reaching (or renewing) the active stage means a TOTP code was just accepted.
            cs::totp_at.eq((stage == Stage::Active).then_some(now)),
        ))
        .execute(conn)?;
    if changed != 1 {
        return Err(AppError::internal("session vanished while advancing"));
    }
    Ok(id)
}

/// Ends one session.
pub fn destroy(conn: &mut PgConnection, id_hash: &[u8]) -> Result<(), AppError> {
    diesel::delete(cs::table.filter(cs::id_hash.eq(id_hash))).execute(conn)?;
    Ok(())
}

/// When the session last passed a TOTP check (sign-in or step-up), if ever.
pub fn totp_at(conn: &mut PgConnection, id_hash: &[u8]) -> Result<Option<DateTime<Utc>>, AppError> {
    Ok(cs::table
        .filter(cs::id_hash.eq(id_hash))
        .select(cs::totp_at)
        .first::<Option<DateTime<Utc>>>(conn)
        .optional()?
        .flatten())
}

/// A session as the console lists it (no id): stage, started, last used.
pub type Listed = (String, DateTime<Utc>, DateTime<Utc>);

/// A user's live sessions, newest first.
pub fn list_of_user(
    conn: &mut PgConnection,
    user_id: UserId,
    life: &Lifetimes,
    now: DateTime<Utc>,
) -> Result<Vec<Listed>, AppError> {
    Ok(cs::table
        .filter(
            cs::user_id
                .eq(user_id)
                .and(cs::last_seen_at.gt(now - life.idle))
                .and(cs::created_at.gt(now - life.absolute)),
        )
        .select((cs::stage, cs::created_at, cs::last_seen_at))
        .order(cs::created_at.desc())
        .load(conn)?)
}

/// Deletes every expired session (pre-login ones after [`PRE_LOGIN_MAX_AGE_SECS`]).
pub fn sweep(
    conn: &mut PgConnection,
    life: &Lifetimes,
    now: DateTime<Utc>,
) -> Result<(), AppError> {
    diesel::delete(
        cs::table.filter(
            cs::last_seen_at
                .le(now - life.idle)
                .or(cs::created_at.le(now - life.absolute))
                .or(cs::stage
                    .eq(Stage::PreLogin.as_str())
                    .and(cs::created_at.le(pre_login_cutoff(now)))),
        ),
    )
    .execute(conn)?;
    Ok(())
}
