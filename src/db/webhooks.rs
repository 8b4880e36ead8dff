//! Signed webhooks in PostgreSQL: the endpoints administrators register (their signing
//! secret sealed like every other secret), the outbox of messages and one delivery per
//! message and endpoint. The delivery worker (`crate::webhooks`) reads the due deliveries
//! and records each attempt here.
//!
//! A message is written by [`enqueue`] inside the transaction of what it reports (an
//! alert in `alerts::raise_all`, a key rotation, a failed chain verification), so it
//! exists exactly when that does. Its data is built only by the [`NewMessage`]
//! constructors, from ids and codes: no PHI and no free text can reach a payload.

use crate::crypto::{FieldPlace, Keyring};
use crate::db::alerts::NewAlert;
use crate::domain::{GrantId, PatientId, UserId, WebhookDeliveryId, WebhookEndpointId};
use crate::error::AppError;
use crate::schema::{webhook_deliveries as wd, webhook_endpoints as we, webhook_messages as wm};
use crate::secret::Secret;
use chrono::{DateTime, Utc};
use diesel::pg::PgConnection;
use diesel::prelude::*;
use rand::RngCore;
use serde_json::json;
use uuid::Uuid;
use zeroize::Zeroizing;

/// What a message reports (its Standard Webhooks `type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    /// A new alert (detectors and break-glass events).
    AlertRaised,
    /// A data-key or key-encryption-key rotation.
    KeyRotated,
    /// A verification of the audit chain found a problem.
    ChainVerificationFailed,
}

impl EventType {
    pub const ALL: [EventType; 3] = [
        EventType::AlertRaised,
        EventType::KeyRotated,
        EventType::ChainVerificationFailed,
    ];

    pub fn code(self) -> &'static str {
        match self {
            EventType::AlertRaised => "alert.raised",
            EventType::KeyRotated => "key.rotated",
            EventType::ChainVerificationFailed => "audit.verification-failed",
        }
    }
}

/// A message to put in the outbox. Only the constructors fill it: ids, codes, numbers
/// and the console path of what it reports.
#[derive(Clone, Debug, PartialEq)]
pub struct NewMessage {
    event_type: EventType,
    data: serde_json::Value,
    at: DateTime<Utc>,
}

impl NewMessage {
    /// A newly inserted alert `id`.
    pub fn alert(id: Uuid, a: &NewAlert) -> Self {
        Self::alert_of(
            id,
            (a.kind.code(), a.severity.code(), a.reason),
            (a.user_id, a.patient_id, a.grant_id),
            a.created_at,
        )
    }

    /// A newly inserted break-glass alert `id` (`db::break_glass::raise_alert`).
    pub fn break_glass_alert(
        id: Uuid,
        kind: &'static str,
        (grant, user, patient): (GrantId, UserId, PatientId),
        at: DateTime<Utc>,
    ) -> Self {
        Self::alert_of(
            id,
            (kind, "high", ""),
            (Some(user), Some(patient), Some(grant)),
            at,
        )
    }

    fn alert_of(
        id: Uuid,
        (kind, severity, reason): (&'static str, &'static str, &'static str),
        (user, patient, grant): (Option<UserId>, Option<PatientId>, Option<GrantId>),
        at: DateTime<Utc>,
    ) -> Self {
        NewMessage {
            event_type: EventType::AlertRaised,
            data: json!({
                "alert_id": id,
                "kind": kind,
                "severity": severity,
                "reason": reason,
                "user_id": user,
                "patient_id": patient,
                "grant_id": grant,
                "created_at": at,
                "console_path": format!("/console/alerts/{id}"),
            }),
            at,
        }
    }

    /// A rotation: `what` is `data-key` (new data-key `version`) or `kek` (`rewrapped`
    /// data keys under a new key-encryption key).
    pub fn key_rotation(what: KeyRotation, at: DateTime<Utc>) -> Self {
        let data = match what {
            KeyRotation::DataKey { version } => json!({
                "key": "data-key",
                "active_version": version,
                "console_path": "/console",
            }),
            KeyRotation::Kek { rewrapped } => json!({
                "key": "kek",
                "rewrapped_data_keys": rewrapped,
                "console_path": "/console",
            }),
        };
        NewMessage {
            event_type: EventType::KeyRotated,
            data,
            at,
        }
    }

    /// A verification (console run `run`, or the command line) that failed at sequence
    /// number `failed_seq`. The verifier's problem text stays in the database.
    pub fn verification_failed(run: Option<Uuid>, failed_seq: i64, at: DateTime<Utc>) -> Self {
        NewMessage {
            event_type: EventType::ChainVerificationFailed,
            data: json!({
                "verification_id": run,
                "failed_seq": failed_seq,
                "console_path": format!("/console/audit/{failed_seq}"),
            }),
            at,
        }
    }

    pub fn event_type(&self) -> EventType {
        self.event_type
    }
}

/// Which key was rotated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyRotation {
    DataKey { version: i32 },
    Kek { rewrapped: u64 },
}

/// Puts `messages` in the outbox with one pending delivery per enabled endpoint, in the
/// caller's transaction. Without an enabled endpoint nothing is written (there is nobody
/// to tell). Returns the deliveries created.
pub fn enqueue(conn: &mut PgConnection, messages: &[NewMessage]) -> Result<usize, AppError> {
    if messages.is_empty() {
        return Ok(0);
    }
    let endpoints: Vec<Uuid> = we::table
        .filter(we::enabled.eq(true))
        .select(we::id)
        .load(conn)?;
    if endpoints.is_empty() {
        return Ok(0);
    }
    let mut created = 0;
    // Bounded chunks keep one statement's parameters far below PostgreSQL's limit.
    for chunk in messages.chunks(200) {
        let rows: Vec<_> = chunk
            .iter()
            .map(|m| (Uuid::new_v4(), m))
            .collect::<Vec<_>>();
        diesel::insert_into(wm::table)
            .values(
                rows.iter()
                    .map(|(id, m)| {
                        (
                            wm::id.eq(*id),
                            wm::event_type.eq(m.event_type.code()),
                            wm::data.eq(&m.data),
                            wm::created_at.eq(m.at),
                        )
                    })
                    .collect::<Vec<_>>(),
            )
            .execute(conn)?;
        let deliveries: Vec<_> = rows
            .iter()
            .flat_map(|(id, m)| {
                endpoints.iter().map(move |e| {
                    (
                        wd::id.eq(Uuid::new_v4()),
                        wd::message_id.eq(*id),
                        wd::endpoint_id.eq(*e),
                        wd::state.eq(STATE_PENDING),
                        wd::next_attempt_at.eq(m.at),
                        wd::created_at.eq(m.at),
                    )
                })
            })
            .collect();
        created += diesel::insert_into(wd::table)
            .values(deliveries)
            .execute(conn)?;
    }
    Ok(created)
}

pub const STATE_PENDING: &str = "pending";
pub const STATE_DELIVERED: &str = "delivered";
pub const STATE_DEAD: &str = "dead";

fn place(id: Uuid) -> FieldPlace {
    crate::crypto::columns::webhook_endpoints::SECRET.at(id)
}

/// A signing secret as Standard Webhooks writes it: `whsec_` and the base64 of the key.
fn secret_text(key: &[u8]) -> Secret<String> {
    use base64::Engine;
    Secret::new(format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    ))
}

/// 32 random bytes, sealed for endpoint `id`; returns the sealed value, its key version
/// and the secret text (shown once).
fn new_secret(
    conn: &mut PgConnection,
    keyring: &Keyring,
    id: Uuid,
) -> Result<(Vec<u8>, i32, Secret<String>), AppError> {
    let mut key = Zeroizing::new(vec![0u8; 32]);
    rand::rngs::OsRng.fill_bytes(&mut key);
    let sealer = keyring.sealer_for_write(conn)?;
    let sealed = sealer.seal(&place(id), &key)?;
    Ok((sealed, sealer.version(), secret_text(&key)))
}

/// Registers an endpoint with a fresh secret; returns its id and the secret, which is
/// never readable again (only its sealed form is stored).
pub fn create_endpoint(
    conn: &mut PgConnection,
    keyring: &Keyring,
    url: &str,
    by: UserId,
    now: DateTime<Utc>,
) -> Result<(WebhookEndpointId, Secret<String>), AppError> {
    let id = Uuid::new_v4();
    let (sealed, version, secret) = new_secret(conn, keyring, id)?;
    diesel::insert_into(we::table)
        .values((
            we::id.eq(id),
            we::url.eq(url),
            we::secret_sealed.eq(sealed),
            we::key_version.eq(version),
            we::created_by.eq(by),
            we::created_at.eq(now),
        ))
        .execute(conn)?;
    Ok((WebhookEndpointId::from(id), secret))
}

/// Replaces an endpoint's secret; `None` when there is no such endpoint. Deliveries not
/// yet made are signed with the new one.
pub fn rotate_secret(
    conn: &mut PgConnection,
    keyring: &Keyring,
    id: WebhookEndpointId,
    now: DateTime<Utc>,
) -> Result<Option<Secret<String>>, AppError> {
    let (sealed, version, secret) = new_secret(conn, keyring, id.as_uuid())?;
    let n = diesel::update(we::table.filter(we::id.eq(id.as_uuid())))
        .set((
            we::secret_sealed.eq(sealed),
            we::key_version.eq(version),
            we::secret_rotated_at.eq(now),
        ))
        .execute(conn)?;
    Ok((n == 1).then_some(secret))
}

/// Disables an endpoint (no new deliveries; pending ones are not attempted); `false` when
/// there is no such endpoint.
pub fn disable(
    conn: &mut PgConnection,
    id: WebhookEndpointId,
    now: DateTime<Utc>,
) -> Result<bool, AppError> {
    let n = diesel::update(we::table.filter(we::id.eq(id.as_uuid())))
        .set((we::enabled.eq(false), we::disabled_at.eq(now)))
        .execute(conn)?;
    Ok(n == 1)
}

/// An endpoint as the console lists it (never its secret).
#[derive(Clone, Debug, Queryable)]
pub struct EndpointRow {
    pub id: Uuid,
    pub url: String,
    pub enabled: bool,
    pub created_at: DateTime<Utc>,
    pub secret_rotated_at: Option<DateTime<Utc>>,
}

pub fn endpoints(conn: &mut PgConnection) -> Result<Vec<EndpointRow>, AppError> {
    Ok(we::table
        .order((we::created_at.desc(), we::id))
        .select((
            we::id,
            we::url,
            we::enabled,
            we::created_at,
            we::secret_rotated_at,
        ))
        .load(conn)?)
}

/// A delivery as the console lists it.
#[derive(Clone, Debug, Queryable)]
pub struct DeliveryRow {
    pub id: Uuid,
    pub endpoint_id: Uuid,
    pub message_id: Uuid,
    pub event_type: String,
    pub state: String,
    pub attempts: i32,
    pub last_outcome: Option<String>,
    pub last_status: Option<i32>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// The newest deliveries (at most `limit`).
pub fn recent_deliveries(
    conn: &mut PgConnection,
    limit: i64,
) -> Result<Vec<DeliveryRow>, AppError> {
    Ok(wd::table
        .inner_join(wm::table)
        .order((wd::created_at.desc(), wd::id))
        .limit(limit)
        .select((
            wd::id,
            wd::endpoint_id,
            wd::message_id,
            wm::event_type,
            wd::state,
            wd::attempts,
            wd::last_outcome,
            wd::last_status,
            wd::last_attempt_at,
            wd::delivered_at,
            wd::created_at,
        ))
        .load(conn)?)
}

/// Queues a delivery again (delivered, dead or pending) for an attempt at `now` with a
/// fresh attempt count; `false` when there is no such delivery.
pub fn redeliver(
    conn: &mut PgConnection,
    id: WebhookDeliveryId,
    now: DateTime<Utc>,
) -> Result<bool, AppError> {
    let n = diesel::update(wd::table.filter(wd::id.eq(id.as_uuid())))
        .set((
            wd::state.eq(STATE_PENDING),
            wd::attempts.eq(0),
            wd::next_attempt_at.eq(now),
        ))
        .execute(conn)?;
    Ok(n == 1)
}

/// A delivery that is due, with what signing and sending it needs.
pub struct Due {
    pub id: WebhookDeliveryId,
    pub message_id: Uuid,
    pub event_type: String,
    pub data: serde_json::Value,
    pub message_at: DateTime<Utc>,
    pub url: String,
    /// The endpoint's signing key (raw bytes).
    pub key: Zeroizing<Vec<u8>>,
    /// Attempts made before this one.
    pub attempts: i32,
}

/// The pending deliveries due at `now` to enabled endpoints, oldest first (at most
/// `limit`), their endpoints' secrets opened.
pub fn due(
    conn: &mut PgConnection,
    keyring: &Keyring,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<Due>, AppError> {
    type Row = (
        Uuid,
        Uuid,
        String,
        serde_json::Value,
        DateTime<Utc>,
        Uuid,
        String,
        Vec<u8>,
        i32,
        i32,
    );
    let rows: Vec<Row> = wd::table
        .inner_join(wm::table)
        .inner_join(we::table)
        .filter(wd::state.eq(STATE_PENDING))
        .filter(wd::next_attempt_at.le(now))
        .filter(we::enabled.eq(true))
        .order((wd::next_attempt_at, wd::id))
        .limit(limit)
        .select((
            wd::id,
            wm::id,
            wm::event_type,
            wm::data,
            wm::created_at,
            we::id,
            we::url,
            we::secret_sealed,
            we::key_version,
            wd::attempts,
        ))
        .load(conn)?;
    let mut due = Vec::with_capacity(rows.len());
    for (id, message_id, event_type, data, message_at, endpoint, url, sealed, version, attempts) in
        rows
    {
        keyring.ensure_version(conn, version)?;
        let key = keyring.open(&place(endpoint), &sealed)?;
        due.push(Due {
            id: WebhookDeliveryId::from(id),
            message_id,
            event_type,
            data,
            message_at,
            url,
            key,
            attempts,
        });
    }
    Ok(due)
}

/// What became of one attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptResult {
    Delivered {
        status: u16,
    },
    /// Failed with this outcome code; tried again at `retry_at`, or dead-lettered when
    /// `None`.
    Failed {
        outcome: &'static str,
        status: Option<u16>,
        retry_at: Option<DateTime<Utc>>,
    },
}

/// Records one attempt on a delivery.
pub fn record_attempt(
    conn: &mut PgConnection,
    id: WebhookDeliveryId,
    result: AttemptResult,
    now: DateTime<Utc>,
) -> Result<(), AppError> {
    let target = wd::table.filter(wd::id.eq(id.as_uuid()));
    match result {
        AttemptResult::Delivered { status } => {
            diesel::update(target)
                .set((
                    wd::state.eq(STATE_DELIVERED),
                    wd::attempts.eq(wd::attempts + 1),
                    wd::last_attempt_at.eq(now),
                    wd::last_outcome.eq("delivered"),
                    wd::last_status.eq(Some(i32::from(status))),
                    wd::delivered_at.eq(now),
                ))
                .execute(conn)?;
        }
        AttemptResult::Failed {
            outcome,
            status,
            retry_at,
        } => {
            let (state, next) = match retry_at {
                Some(at) => (STATE_PENDING, at),
                None => (STATE_DEAD, now),
            };
            diesel::update(target)
                .set((
                    wd::state.eq(state),
                    wd::attempts.eq(wd::attempts + 1),
                    wd::last_attempt_at.eq(now),
                    wd::last_outcome.eq(outcome),
                    wd::last_status.eq(status.map(i32::from)),
                    wd::next_attempt_at.eq(next),
                ))
                .execute(conn)?;
        }
    }
    Ok(())
}

/// Key of the session-level advisory lock held by the one working delivery runner.
pub const DELIVERY_LOCK_KEY: i64 = 0x4355_5354_5748_4f4b; // "CUSTWHOK"

/// Takes the delivery lock on this session if free.
pub fn try_lock_delivery(conn: &mut PgConnection) -> Result<bool, AppError> {
    #[derive(QueryableByName)]
    struct Got {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        got: bool,
    }
    let got: Got = diesel::sql_query("SELECT pg_try_advisory_lock($1) AS got")
        .bind::<diesel::sql_types::BigInt, _>(DELIVERY_LOCK_KEY)
        .get_result(conn)?;
    Ok(got.got)
}

pub fn unlock_delivery(conn: &mut PgConnection) -> Result<(), AppError> {
    diesel::sql_query("SELECT pg_advisory_unlock($1)")
        .bind::<diesel::sql_types::BigInt, _>(DELIVERY_LOCK_KEY)
        .execute(conn)?;
    Ok(())
}
