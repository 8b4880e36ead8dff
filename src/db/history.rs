//! The sealed history of FHIR resources (`resource_history`): one row per version a write
//! produced — the resource's whole FHIR JSON sealed (AAD bound to the row), or no body for
//! a deletion. Read back by `_history` and vread, which shape it to the reader's view.
//! Every query is parameterised.

use crate::crypto::Keyring;
use crate::crypto::columns::resource_history::BODY;
use crate::domain::PatientId;
use crate::error::AppError;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Bool, Bytea, Int4, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use serde_json::Value;
use uuid::Uuid;

/// One stored version, opened.
#[derive(Debug)]
pub struct Version {
    pub version: i32,
    pub patient_id: PatientId,
    pub deleted: bool,
    pub recorded_at: DateTime<Utc>,
    /// The resource's FHIR JSON (every field); `None` for a deletion.
    pub body: Option<Value>,
}

#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = Int4)]
    version: i32,
    #[diesel(sql_type = SqlUuid)]
    patient_id: Uuid,
    #[diesel(sql_type = Bool)]
    deleted: bool,
    #[diesel(sql_type = Timestamptz)]
    recorded_at: DateTime<Utc>,
    #[diesel(sql_type = Int4)]
    key_version: i32,
    #[diesel(sql_type = Nullable<Bytea>)]
    body_sealed: Option<Vec<u8>>,
}

/// Appends version `version` of `resource_type`/`resource_id` (in the caller's
/// transaction, with the write it records).
pub fn record(
    conn: &mut PgConnection,
    kr: &Keyring,
    resource_type: &str,
    resource_id: Uuid,
    version: i32,
    patient: PatientId,
    body: Option<&Value>,
) -> Result<(), AppError> {
    let sealer = kr.sealer_for_write(conn)?;
    let id = Uuid::new_v4();
    let sealed = body
        .map(|b| sealer.seal_value(&BODY.at(id), b))
        .transpose()?;
    diesel::sql_query(
        "INSERT INTO resource_history \
         (id, resource_type, resource_id, version, patient_id, deleted, key_version, body_sealed) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind::<SqlUuid, _>(id)
    .bind::<Text, _>(resource_type)
    .bind::<SqlUuid, _>(resource_id)
    .bind::<Int4, _>(version)
    .bind::<SqlUuid, _>(patient.as_uuid())
    .bind::<Bool, _>(body.is_none())
    .bind::<Int4, _>(sealer.version())
    .bind::<Nullable<Bytea>, _>(sealed)
    .execute(conn)?;
    Ok(())
}

const COLUMNS: &str = "id, version, patient_id, deleted, recorded_at, key_version, body_sealed";

/// Opens a row; its body must name the resource and the version the row says (a body
/// moved between rows does not even open: the AAD binds it to its row).
fn open(
    conn: &mut PgConnection,
    kr: &Keyring,
    resource_id: Uuid,
    row: Row,
) -> Result<Version, AppError> {
    let body = match &row.body_sealed {
        None => None,
        Some(sealed) => {
            kr.ensure_version(conn, row.key_version)?;
            let body: Value = kr.open_value(&BODY.at(row.id), sealed)?;
            let id_ok = body["id"].as_str() == Some(resource_id.to_string().as_str());
            let version_ok =
                body["meta"]["versionId"].as_str() == Some(row.version.to_string().as_str());
            if !(id_ok && version_ok) {
                return Err(AppError::internal("history body of another version"));
            }
            Some(body)
        }
    };
    Ok(Version {
        version: row.version,
        patient_id: PatientId(row.patient_id),
        deleted: row.deleted,
        recorded_at: row.recorded_at,
        body,
    })
}

/// Version `version` of a resource.
pub fn get(
    conn: &mut PgConnection,
    kr: &Keyring,
    resource_type: &str,
    resource_id: Uuid,
    version: i32,
) -> Result<Option<Version>, AppError> {
    let row: Option<Row> = diesel::sql_query(format!(
        "SELECT {COLUMNS} FROM resource_history \
         WHERE resource_type = $1 AND resource_id = $2 AND version = $3"
    ))
    .bind::<Text, _>(resource_type)
    .bind::<SqlUuid, _>(resource_id)
    .bind::<Int4, _>(version)
    .get_result(conn)
    .optional()?;
    row.map(|r| open(conn, kr, resource_id, r)).transpose()
}

/// The latest `limit` versions of a resource, newest first.
pub fn list(
    conn: &mut PgConnection,
    kr: &Keyring,
    resource_type: &str,
    resource_id: Uuid,
    limit: i64,
) -> Result<Vec<Version>, AppError> {
    let rows: Vec<Row> = diesel::sql_query(format!(
        "SELECT {COLUMNS} FROM resource_history \
         WHERE resource_type = $1 AND resource_id = $2 ORDER BY version DESC LIMIT $3"
    ))
    .bind::<Text, _>(resource_type)
    .bind::<SqlUuid, _>(resource_id)
    .bind::<diesel::sql_types::BigInt, _>(limit)
    .load(conn)?;
    rows.into_iter()
        .map(|r| open(conn, kr, resource_id, r))
        .collect()
}
