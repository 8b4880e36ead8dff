//! View-shaped patient access: reads select only the sealed columns a policy view allows
//! (the others are never fetched), searches go through blind indexes and carry the
//! policy's row restriction into SQL.

use crate::crypto::columns::{SealedColumn, patients as cols};
use crate::crypto::{BlindKind, Keyring, Phi, Sealable};
use crate::db::records::{Page, SortKey};
use crate::db::scope::ScopeSql;
use crate::domain::{FacilityId, PatientId};
use crate::error::AppError;
use crate::policy::SearchScope;
use chrono::{DateTime, NaiveDate, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Bytea, Int4, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use serde_json::Value;
use uuid::Uuid;

pub use crate::policy::views::PatientFields;

/// The SELECT list of `fields`: a column outside them becomes a typed NULL.
fn select_list(fields: PatientFields) -> String {
    let col = |on: bool, column: SealedColumn| {
        let name = column.column;
        if on {
            name.to_string()
        } else {
            format!("NULL::bytea AS {name}")
        }
    };
    [
        "id".to_string(),
        "version".to_string(),
        "key_version".to_string(),
        "facility_id".to_string(),
        "updated_at".to_string(),
        "confidentiality".to_string(),
        if fields.gender {
            "gender".to_string()
        } else {
            "NULL::text AS gender".to_string()
        },
        col(fields.mrn, cols::MRN),
        col(fields.ssn, cols::SSN),
        col(fields.name, cols::FAMILY),
        col(fields.name, cols::GIVEN),
        col(fields.birth_date, cols::BIRTH_DATE),
        col(fields.telecom, cols::TELECOM),
        col(fields.address, cols::ADDRESS),
    ]
    .join(", ")
}

/// A patient shaped to a view: fields outside it are `None`.
#[derive(Debug)]
pub struct PatientView {
    pub id: PatientId,
    pub version: i32,
    pub facility_id: FacilityId,
    pub updated_at: DateTime<Utc>,
    /// The record's confidentiality (N, R, V; not PHI, part of every view).
    pub confidentiality: crate::policy::Confidentiality,
    pub gender: Option<String>,
    pub mrn: Option<Phi<String>>,
    pub ssn: Option<Phi<String>>,
    pub family: Option<Phi<String>>,
    pub given: Option<Phi<String>>,
    pub birth_date: Option<Phi<NaiveDate>>,
    pub telecom: Option<Phi<Value>>,
    pub address: Option<Phi<Value>>,
}

#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = Int4)]
    version: i32,
    #[diesel(sql_type = Int4)]
    key_version: i32,
    #[diesel(sql_type = SqlUuid)]
    facility_id: FacilityId,
    #[diesel(sql_type = Timestamptz)]
    updated_at: DateTime<Utc>,
    #[diesel(sql_type = Text)]
    confidentiality: String,
    #[diesel(sql_type = Nullable<Text>)]
    gender: Option<String>,
    #[diesel(sql_type = Nullable<Bytea>)]
    mrn_sealed: Option<Vec<u8>>,
    #[diesel(sql_type = Nullable<Bytea>)]
    ssn_sealed: Option<Vec<u8>>,
    #[diesel(sql_type = Nullable<Bytea>)]
    family_sealed: Option<Vec<u8>>,
    #[diesel(sql_type = Nullable<Bytea>)]
    given_sealed: Option<Vec<u8>>,
    #[diesel(sql_type = Nullable<Bytea>)]
    birth_date_sealed: Option<Vec<u8>>,
    #[diesel(sql_type = Nullable<Bytea>)]
    telecom_sealed: Option<Vec<u8>>,
    #[diesel(sql_type = Nullable<Bytea>)]
    address_sealed: Option<Vec<u8>>,
}

fn open<V: Sealable>(
    kr: &Keyring,
    column: SealedColumn,
    row: Uuid,
    sealed: Option<Vec<u8>>,
) -> Result<Option<Phi<V>>, AppError> {
    sealed
        .map(|bytes| {
            kr.open_value::<V>(&column.at(row), &bytes)
                .map(Phi::new)
                .map_err(|e| {
                    tracing::error!(table = column.table, column = column.column, row = %row, error = %e, "cannot open sealed value");
                    AppError::from(e)
                })
        })
        .transpose()
}

impl Row {
    fn open(self, conn: &mut PgConnection, kr: &Keyring) -> Result<PatientView, AppError> {
        kr.ensure_version(conn, self.key_version)?;
        let id = self.id;
        Ok(PatientView {
            id: PatientId(id),
            version: self.version,
            facility_id: self.facility_id,
            updated_at: self.updated_at,
            confidentiality: crate::db::break_glass::parse_level(&self.confidentiality)?,
            gender: self.gender,
            mrn: open(kr, cols::MRN, id, self.mrn_sealed)?,
            ssn: open(kr, cols::SSN, id, self.ssn_sealed)?,
            family: open(kr, cols::FAMILY, id, self.family_sealed)?,
            given: open(kr, cols::GIVEN, id, self.given_sealed)?,
            birth_date: open(kr, cols::BIRTH_DATE, id, self.birth_date_sealed)?,
            telecom: open(kr, cols::TELECOM, id, self.telecom_sealed)?,
            address: open(kr, cols::ADDRESS, id, self.address_sealed)?,
        })
    }
}

/// The view-shaped SELECT of one live patient by id. Unlike `sql_query`, diesel may
/// prepare it once per connection and reuse it: its SQL comes only from the fixed
/// fragments of `select_list` (one text per field set), and the id is a bind parameter.
/// That saves PostgreSQL a parse and plan on every read.
struct ReadById {
    sql: String,
    id: Uuid,
}

impl diesel::query_builder::QueryId for ReadById {
    type QueryId = ();
    // Cached by its SQL text, not by type.
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl diesel::query_builder::QueryFragment<diesel::pg::Pg> for ReadById {
    fn walk_ast<'b>(
        &'b self,
        mut out: diesel::query_builder::AstPass<'_, 'b, diesel::pg::Pg>,
    ) -> QueryResult<()> {
        out.push_sql(&self.sql);
        out.push_bind_param::<SqlUuid, _>(&self.id)?;
        out.push_sql(" AND deleted_at IS NULL");
        Ok(())
    }
}

impl diesel::query_builder::Query for ReadById {
    type SqlType = diesel::sql_types::Untyped;
}

impl RunQueryDsl<PgConnection> for ReadById {}

/// One live patient, shaped to `fields`.
pub fn read(
    conn: &mut PgConnection,
    kr: &Keyring,
    id: Uuid,
    fields: PatientFields,
) -> Result<Option<PatientView>, AppError> {
    let query = ReadById {
        sql: format!("SELECT {} FROM patients WHERE id = ", select_list(fields)),
        id,
    };
    let row: Option<Row> = query.get_result(conn).optional()?;
    row.map(|r| r.open(conn, kr)).transpose()
}

/// At most `limit` live patients whose MRN is exactly `mrn` (through its blind index),
/// across the organisation, shaped to `fields`: the identification-only lookup that
/// precedes a break-glass request (`fhir::break_glass::lookup`; its caller restricts
/// `fields` to identification).
pub fn lookup_by_mrn(
    conn: &mut PgConnection,
    kr: &Keyring,
    mrn: &str,
    fields: PatientFields,
    limit: i64,
) -> Result<Vec<PatientView>, AppError> {
    let index = kr
        .blind_index(BlindKind::Mrn, mrn)
        .map_err(|_| AppError::unprocessable("Invalid search parameter for identifier."))?;
    let sql = format!(
        "SELECT {} FROM patients WHERE mrn_index = $1 AND deleted_at IS NULL ORDER BY id LIMIT $2",
        select_list(fields)
    );
    let rows: Vec<Row> = diesel::sql_query(sql)
        .bind::<Bytea, _>(index)
        .bind::<diesel::sql_types::BigInt, _>(limit)
        .load(conn)?;
    rows.into_iter().map(|r| r.open(conn, kr)).collect()
}

/// How a name is matched: FHIR's default starts-with (through the prefix indexes),
/// `:exact` (the whole name, through the equality index) or `:contains` (a substring of
/// one word, through the infix indexes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameMatch {
    StartsWith,
    Exact,
    Contains,
}

/// A name search: its values (a comma-separated OR, FHIR R4 3.1.1.4.1) and how they are
/// matched.
pub struct NameQuery {
    pub values: Vec<String>,
    pub how: NameMatch,
}

/// Why a starts-with value is refused (400, fixed; the value is never repeated).
pub const NAME_PREFIX_LENGTH: &str = "A name search (family, given) needs 3 to 40 characters: names are sealed and matched by their first characters through blind indexes, which start at 3 characters. Use :exact to match a whole name.";

/// Why a `:contains` value is refused (400, fixed; the value is never repeated).
pub const NAME_INFIX_REFUSED: &str = "A name search with :contains (family, given) needs 3 to 40 characters within one word of the name: names are sealed and matched through blind indexes of the substrings of each word, which start at 3 characters and do not span spaces.";

/// Search criteria (through blind indexes), all optional and AND-ed.
#[derive(Default)]
pub struct Criteria {
    pub family: Option<NameQuery>,
    pub given: Option<NameQuery>,
    pub birth_date: Option<NaiveDate>,
    pub mrn: Option<String>,
    pub ssn: Option<String>,
}

/// The WHERE conditions of `criteria` (placeholders from `$first` on) and their blind
/// index binds. Built from fixed fragments only; every value is a bind parameter.
fn conditions(
    kr: &Keyring,
    criteria: &Criteria,
    first: usize,
) -> Result<(Vec<String>, Vec<Vec<u8>>), AppError> {
    let mut conditions = vec!["p.deleted_at IS NULL".to_string()];
    let mut binds: Vec<Vec<u8>> = Vec::new();
    // `column = $n`, or for a name prefix or infix the GIN-indexed containment
    // `name_prefixes @> ARRAY[$n]`: one equality test against the row's tags. Several
    // values (an OR) are `column IN (…)`, or the overlap `name_prefixes && ARRAY[…]`.
    let mut add_any = |column: &str, tags: Vec<Vec<u8>>| {
        let from = binds.len() + first;
        let n = tags.len();
        binds.extend(tags);
        let placeholders: Vec<String> = (from..from + n).map(|i| format!("${i}")).collect();
        conditions.push(match (column, n) {
            ("name_prefixes" | "name_infixes", 1) => {
                format!("p.{column} @> ARRAY[{}::bytea]", placeholders[0])
            }
            ("name_prefixes" | "name_infixes", _) => {
                format!("p.{column} && ARRAY[{}]::bytea[]", placeholders.join(", "))
            }
            (_, 1) => format!("p.{column} = {}", placeholders[0]),
            _ => format!("p.{column} IN ({})", placeholders.join(", ")),
        });
    };
    let index = |kind: BlindKind, column: &str, value: &str| -> Result<Vec<u8>, AppError> {
        kr.blind_index(kind, value)
            .map_err(|_| AppError::unprocessable(format!("Invalid search parameter for {column}.")))
    };
    let names = [
        (
            &criteria.family,
            BlindKind::Family,
            "family_index",
            BlindKind::FamilyPrefix,
            BlindKind::FamilyInfix,
        ),
        (
            &criteria.given,
            BlindKind::Given,
            "given_index",
            BlindKind::GivenPrefix,
            BlindKind::GivenInfix,
        ),
    ];
    for (query, exact, column, prefix, infix) in names {
        let Some(NameQuery { values, how }) = query else {
            continue;
        };
        let (target, tags) = match how {
            NameMatch::Exact => (
                column,
                values
                    .iter()
                    .map(|v| index(exact, column, v))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            NameMatch::StartsWith => (
                "name_prefixes",
                values
                    .iter()
                    .map(|v| {
                        kr.prefix_query(prefix, v)
                            .map_err(|_| AppError::bad_request(NAME_PREFIX_LENGTH))
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            NameMatch::Contains => (
                "name_infixes",
                values
                    .iter()
                    .map(|v| {
                        kr.infix_query(infix, v)
                            .map_err(|_| AppError::bad_request(NAME_INFIX_REFUSED))
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        if tags.is_empty() {
            return Err(AppError::bad_request(NAME_PREFIX_LENGTH));
        }
        add_any(target, tags);
    }
    let mut add = |column: &str, bind: Vec<u8>| add_any(column, vec![bind]);
    if let Some(v) = criteria.birth_date {
        let day = v.format("%Y-%m-%d").to_string();
        add(
            "birth_date_index",
            index(BlindKind::BirthDate, "birth_date_index", &day)?,
        );
    }
    if let Some(v) = &criteria.mrn {
        add("mrn_index", index(BlindKind::Mrn, "mrn_index", v)?);
    }
    if let Some(v) = &criteria.ssn {
        add("ssn_index", index(BlindKind::Ssn, "ssn_index", v)?);
    }
    Ok((conditions, binds))
}

/// One page of live patients matching `criteria` within the policy's `scope`, in
/// `page`'s order (by id, or by `updated_at` then id), after its position.
pub fn search(
    conn: &mut PgConnection,
    kr: &Keyring,
    criteria: &Criteria,
    scope: SearchScope,
    page: Page,
    fields: PatientFields,
) -> Result<Vec<PatientView>, AppError> {
    let (mut conditions, binds) = conditions(kr, criteria, 5)?;
    let (scope_sql, scope_id) = ScopeSql::new(scope, "p.id").with_placeholder(1);
    conditions.push(scope_sql);
    // Only `_lastUpdated` sorts patients (every other field is sealed).
    let order = match page.sort {
        None => {
            conditions.push("($2::uuid IS NULL OR p.id > $2)".to_string());
            "p.id".to_string()
        }
        Some(sort) if sort.key == SortKey::LastUpdated && sort.then.is_none() => {
            conditions.push(format!(
                "($2::uuid IS NULL OR (p.updated_at, p.id) {} ($4, $2))",
                sort.after_op()
            ));
            sort.order_sql("p.updated_at", "p.id")
        }
        Some(_) => return Err(AppError::bad_request("Patients sort by _lastUpdated only.")),
    };
    let sql = format!(
        "SELECT {} FROM patients p WHERE {} ORDER BY {order} LIMIT $3",
        select_list(fields),
        conditions.join(" AND ")
    );
    let mut query = diesel::sql_query(sql)
        .bind::<SqlUuid, _>(scope_id)
        .bind::<Nullable<SqlUuid>, _>(page.after.map(|a| a.id))
        .bind::<diesel::sql_types::BigInt, _>(page.limit)
        .bind::<Nullable<Timestamptz>, _>(page.after.and_then(|a| a.at))
        .into_boxed::<diesel::pg::Pg>();
    for b in binds {
        query = query.bind::<Bytea, _>(b);
    }
    let rows: Vec<Row> = query.load(conn)?;
    rows.into_iter().map(|r| r.open(conn, kr)).collect()
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// How many live patients within `scope` match `criteria` (`_total`, `_summary=count`).
pub fn count(
    conn: &mut PgConnection,
    kr: &Keyring,
    criteria: &Criteria,
    scope: SearchScope,
) -> Result<i64, AppError> {
    let (mut conditions, binds) = conditions(kr, criteria, 2)?;
    let (scope_sql, scope_id) = ScopeSql::new(scope, "p.id").with_placeholder(1);
    conditions.push(scope_sql);
    let sql = format!(
        "SELECT count(*) AS n FROM patients p WHERE {}",
        conditions.join(" AND ")
    );
    let mut query = diesel::sql_query(sql)
        .bind::<SqlUuid, _>(scope_id)
        .into_boxed::<diesel::pg::Pg>();
    for b in binds {
        query = query.bind::<Bytea, _>(b);
    }
    Ok(query.get_result::<Count>(conn)?.n)
}

impl PatientView {
    /// A full patient row (as an insert or update returns it) cut down to `fields`, so a
    /// write answers with exactly the principal's view, without a second read.
    pub fn shaped(p: super::Patient, fields: PatientFields) -> PatientView {
        let keep = |on: bool| on;
        PatientView {
            id: p.id,
            version: p.version,
            facility_id: p.facility_id,
            updated_at: p.updated_at,
            confidentiality: p.confidentiality,
            gender: keep(fields.gender).then_some(p.gender),
            mrn: keep(fields.mrn).then_some(p.mrn),
            ssn: if fields.ssn { p.ssn } else { None },
            family: keep(fields.name).then_some(p.family),
            given: keep(fields.name).then_some(p.given),
            birth_date: keep(fields.birth_date).then_some(p.birth_date),
            telecom: if fields.telecom { p.telecom } else { None },
            address: if fields.address { p.address } else { None },
        }
    }
}
