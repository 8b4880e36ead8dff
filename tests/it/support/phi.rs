//! Full-row patient lookups for tests only (by id, SSN or family name): the product reads
//! patients only through view-shaped queries (`db::patients::views`), so these full-PHI
//! reads live in the test tree. They open every sealed column through the product's
//! `Keyring`, as the product does, so a wrong key or a moved ciphertext fails the same
//! way (a 500 whose logged cause names the row and column).

use custodian::crypto::columns::{SealedColumn, patients};
use custodian::crypto::{BlindKind, Keyring, Phi, Sealable};
use custodian::db::phi::Patient;
use custodian::db::schema::patients as p;
use custodian::error::AppError;
use diesel::pg::Pg;
use diesel::prelude::*;
use uuid::Uuid;

#[derive(Queryable, Selectable)]
#[diesel(table_name = p, check_for_backend(Pg))]
struct Row {
    id: Uuid,
    version: i32,
    key_version: i32,
    facility_id: Uuid,
    mrn_sealed: Vec<u8>,
    ssn_sealed: Option<Vec<u8>>,
    family_sealed: Vec<u8>,
    given_sealed: Vec<u8>,
    birth_date_sealed: Vec<u8>,
    gender: String,
    telecom_sealed: Option<Vec<u8>>,
    address_sealed: Option<Vec<u8>>,
    created_at: chrono::DateTime<chrono::Utc>,
    updated_at: chrono::DateTime<chrono::Utc>,
    deleted_at: Option<chrono::DateTime<chrono::Utc>>,
    confidentiality: String,
}

fn open<T: Sealable>(
    kr: &Keyring,
    column: SealedColumn,
    id: Uuid,
    sealed: &[u8],
) -> Result<Phi<T>, AppError> {
    kr.open_value::<T>(&column.at(id), sealed)
        .map(Phi::new)
        .map_err(AppError::from)
}

fn open_opt<T: Sealable>(
    kr: &Keyring,
    column: SealedColumn,
    id: Uuid,
    sealed: Option<&[u8]>,
) -> Result<Option<Phi<T>>, AppError> {
    sealed.map(|s| open(kr, column, id, s)).transpose()
}

impl Row {
    fn open(self, conn: &mut PgConnection, kr: &Keyring) -> Result<Patient, AppError> {
        kr.ensure_version(conn, self.key_version)?;
        let id = self.id;
        Ok(Patient {
            id: custodian::domain::PatientId(id),
            version: self.version,
            key_version: self.key_version,
            facility_id: custodian::domain::FacilityId(self.facility_id),
            mrn: open(kr, patients::MRN, id, &self.mrn_sealed)?,
            ssn: open_opt(kr, patients::SSN, id, self.ssn_sealed.as_deref())?,
            family: open(kr, patients::FAMILY, id, &self.family_sealed)?,
            given: open(kr, patients::GIVEN, id, &self.given_sealed)?,
            birth_date: open(kr, patients::BIRTH_DATE, id, &self.birth_date_sealed)?,
            gender: self.gender,
            telecom: open_opt(kr, patients::TELECOM, id, self.telecom_sealed.as_deref())?,
            address: open_opt(kr, patients::ADDRESS, id, self.address_sealed.as_deref())?,
            created_at: self.created_at,
            updated_at: self.updated_at,
            deleted_at: self.deleted_at,
            confidentiality: custodian::db::break_glass::parse_level(&self.confidentiality)?,
        })
    }
}

/// A live patient by internal id.
pub fn get_patient(
    conn: &mut PgConnection,
    kr: &Keyring,
    id: custodian::domain::PatientId,
) -> Result<Option<Patient>, AppError> {
    let row: Option<Row> = p::table
        .filter(p::id.eq(id))
        .filter(p::deleted_at.is_null())
        .select(Row::as_select())
        .first(conn)
        .optional()
        .map_err(|e| AppError::Internal(e.into()))?;
    row.map(|r| r.open(conn, kr)).transpose()
}

fn by_index(
    conn: &mut PgConnection,
    kr: &Keyring,
    kind: BlindKind,
    raw: &str,
) -> Result<Vec<Patient>, AppError> {
    let index = kr.blind_index(kind, raw)?;
    let q = p::table.filter(p::deleted_at.is_null()).into_boxed();
    let q = match kind {
        BlindKind::Ssn => q.filter(p::ssn_index.eq(index)),
        _ => q.filter(p::family_index.eq(index)),
    };
    let rows: Vec<Row> = q
        .order(p::id)
        .select(Row::as_select())
        .load(conn)
        .map_err(|e| AppError::Internal(e.into()))?;
    rows.into_iter().map(|r| r.open(conn, kr)).collect()
}

/// Live patients with this SSN (normalised: spaces and dashes ignored; nine digits).
pub fn find_patients_by_ssn(
    conn: &mut PgConnection,
    kr: &Keyring,
    ssn: &str,
) -> Result<Vec<Patient>, AppError> {
    by_index(conn, kr, BlindKind::Ssn, ssn)
}

/// Live patients with this family name (trimmed, whitespace collapsed, lowercased).
pub fn find_patients_by_family(
    conn: &mut PgConnection,
    kr: &Keyring,
    family: &str,
) -> Result<Vec<Patient>, AppError> {
    by_index(conn, kr, BlindKind::Family, family)
}
