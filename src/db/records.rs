//! What every patient-linked record table shares (observations, document references,
//! claims): rows with an id, a version, the key version their sealed columns were sealed
//! with, a subject patient and a soft-delete mark. The mechanics are written once here —
//! get by id, policy-scoped search with cursor paging, insert, version-checked update
//! (re-sealing the row with the active key) and soft delete — and a table's repository
//! declares only what is its own by implementing [`RecordTable`] (its row and write types,
//! how to seal and open them, its search criteria as a filter). `statements!` writes the
//! table's typed Diesel statements ([`Statements`]): Diesel's DSL is typed per table, so a
//! small macro stands where generics would fight it. Every query is parameterised.

use crate::crypto::{Keyring, Sealer};
use crate::domain::{PatientId, RecordId};
use crate::error::AppError;
use crate::policy::SearchScope;
use diesel::{Connection, PgConnection, QueryResult};
use uuid::Uuid;

/// One value of a date search, as an interval of time: `from <= t < until` (either end
/// open), or — for the `ne` prefix — everything outside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeRange {
    pub from: Option<chrono::DateTime<chrono::Utc>>,
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    pub outside: bool,
}

/// A search's order besides the default (by id): one or two timestamp columns, each
/// declared by the FHIR descriptor (`_sort=_lastUpdated`, `_sort=-date`,
/// `_sort=date,-_lastUpdated`), ties broken by id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortKey {
    /// `updated_at` of every table.
    LastUpdated,
    /// Observation `effective_at`.
    Date,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sort {
    pub key: SortKey,
    pub desc: bool,
    /// A second key (another one than `key`) ordering rows with the same `key` value,
    /// and its direction.
    pub then: Option<(SortKey, bool)>,
}

impl Sort {
    /// `(column, id) > ($a, $b)` for ascending, `<` for descending: the keyset after a
    /// position, consistent with [`Self::order_sql`] (one key).
    pub fn after_op(self) -> &'static str {
        op(self.desc)
    }
    /// The keyset comparison of the second key (and id): `>` ascending, `<` descending.
    pub fn then_after_op(self) -> &'static str {
        op(self.then.is_some_and(|(_, d)| d))
    }
    /// `ORDER BY` of one key: the column, then id in the same direction.
    pub fn order_sql(self, column: &str, id: &str) -> String {
        let dir = dir(self.desc);
        format!("{column} {dir}, {id} {dir}")
    }
    /// `ORDER BY` of two keys: the first column, then the second and id in the second
    /// key's direction.
    pub fn order_sql_then(self, first: &str, second: &str, id: &str) -> String {
        let then_desc = self.then.is_some_and(|(_, d)| d);
        format!(
            "{first} {}, {second} {}, {id} {}",
            dir(self.desc),
            dir(then_desc),
            dir(then_desc)
        )
    }
}

fn dir(desc: bool) -> &'static str {
    if desc { "DESC" } else { "ASC" }
}

fn op(desc: bool) -> &'static str {
    if desc { "<" } else { ">" }
}

/// Where the previous page ended: the last row's id and, for a sorted search, its sort
/// value(s) (keyset paging: stable while rows are added).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub id: Uuid,
    pub at: Option<chrono::DateTime<chrono::Utc>>,
    /// The second sort key's value, for a search sorted by two keys.
    pub then_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// One page of a search: its order, where the previous page ended, how many rows.
#[derive(Clone, Copy, Debug)]
pub struct Page {
    pub sort: Option<Sort>,
    pub after: Option<Position>,
    pub limit: i64,
}

impl Page {
    pub fn first(limit: i64) -> Page {
        Page {
            sort: None,
            after: None,
            limit,
        }
    }
}

/// A record table's four shapes — the row as stored, the write, the body in clear and
/// the opened record — and how one becomes the other (written by `record_structs!`).
pub trait Shapes {
    /// The row as stored: clear columns and the sealed ones as bytes
    /// (`Queryable + Selectable`, with `id`, `version`, `key_version`, `patient_id`).
    type Row;
    /// The columns a create or update writes, sealed (`Insertable + AsChangeset` with
    /// `key_version` and `patient_id`; columns an update keeps are `skip_update`).
    type Write;
    /// What a create or update writes, in clear (with `patient_id`).
    type New: Send + 'static;
    /// A stored record, opened.
    type Record: Send + 'static;

    /// Seals `new` for row `id` with the active key of `sealer`.
    fn seal(new: &Self::New, sealer: &Sealer, id: Uuid) -> Result<Self::Write, AppError>;
    /// Opens a row's sealed columns (its key version is already loaded).
    fn open(row: Self::Row, kr: &Keyring) -> Result<Self::Record, AppError>;
    /// When the record was last written (`_lastUpdated`).
    fn updated_at(record: &Self::Record) -> chrono::DateTime<chrono::Utc>;
}

/// What a record table declares beyond its shapes; the statements come from `statements!`.
pub trait RecordTable: Shapes + Sized + 'static {
    /// Search criteria, AND-ed.
    type Criteria: Send + 'static;
    /// What to load beyond the row (claims: their items).
    type Fields: Copy + Default + Send + 'static;
    /// The table's boxed query (`<table>::BoxedQuery<'static, Pg>`), for [`Self::filter`].
    type Query;
    /// The column of the table's clinical date (`_sort=date`), if it has one.
    const DATE_COLUMN: Option<&'static str> = None;

    /// Narrows a search to `criteria` (the scope, liveness and paging are added around it).
    fn filter(q: Self::Query, criteria: &Self::Criteria) -> Self::Query;
    /// A record's clinical date (the value of [`Self::DATE_COLUMN`]).
    fn date(_record: &Self::Record) -> Option<chrono::DateTime<chrono::Utc>> {
        None
    }
    /// The column a sort key orders by (`None`: the table does not offer it).
    fn sort_column(key: SortKey) -> Option<&'static str> {
        match key {
            SortKey::LastUpdated => Some("updated_at"),
            SortKey::Date => Self::DATE_COLUMN,
        }
    }
    /// A record's value of a sort key (for the next page's cursor).
    fn sort_value(record: &Self::Record, key: SortKey) -> Option<chrono::DateTime<chrono::Utc>> {
        match key {
            SortKey::LastUpdated => Some(Self::updated_at(record)),
            SortKey::Date => Self::date(record),
        }
    }

    /// Every field (what the history keeps of each version): by default the default.
    fn all_fields() -> Self::Fields {
        Self::Fields::default()
    }

    /// Loads what `fields` asks for beyond the rows; nothing by default.
    fn load(
        _conn: &mut PgConnection,
        _kr: &Keyring,
        _records: &mut [Self::Record],
        _fields: Self::Fields,
    ) -> Result<(), AppError> {
        Ok(())
    }
    /// Writes what belongs to a written row (in its transaction), replacing what was
    /// there on an update, and completes `record` as written; nothing by default.
    fn write_more(
        _conn: &mut PgConnection,
        _sealer: &Sealer,
        _record: &mut Self::Record,
        _new: &Self::New,
        _replace: bool,
    ) -> Result<(), AppError> {
        Ok(())
    }
}

/// The typed statements of a record table, written by `statements!`.
pub trait Statements: RecordTable {
    fn key_version(row: &Self::Row) -> i32;
    fn id(record: &Self::Record) -> RecordId;
    fn version(record: &Self::Record) -> i32;
    /// The subject patient of a record.
    fn subject(record: &Self::Record) -> PatientId;
    /// The patient a body to write is about.
    fn new_subject(new: &Self::New) -> PatientId;
    /// The subject patient of a live record (for the decision point).
    fn patient_of(conn: &mut PgConnection, id: RecordId) -> Result<Option<PatientId>, AppError>;
    /// The subject patient of a record, live or soft-deleted (history, vread, 410).
    fn patient_of_any(conn: &mut PgConnection, id: RecordId)
    -> Result<Option<PatientId>, AppError>;
    /// Soft delete: the row stays (for the record) but is no longer read or found
    /// (`false`: no such live record).
    fn soft_delete(conn: &mut PgConnection, id: RecordId) -> Result<bool, AppError>;
    /// The live row `id`.
    fn live_row(conn: &mut PgConnection, id: Uuid) -> QueryResult<Option<Self::Row>>;
    /// One page of live rows within `scope` matching `criteria`, in `page`'s order.
    fn page(
        conn: &mut PgConnection,
        criteria: &Self::Criteria,
        scope: SearchScope,
        page: Page,
    ) -> QueryResult<Vec<Self::Row>>;
    /// How many live rows within `scope` match `criteria` (`_total`, `_summary=count`).
    fn count(
        conn: &mut PgConnection,
        criteria: &Self::Criteria,
        scope: SearchScope,
    ) -> QueryResult<i64>;
    /// The version of the live row `id`, locked for the update that follows.
    fn current_version(conn: &mut PgConnection, id: Uuid) -> QueryResult<Option<i32>>;
    fn insert_row(conn: &mut PgConnection, id: Uuid, write: &Self::Write)
    -> QueryResult<Self::Row>;
    /// Replaces the live row `id` (same subject) if its version is still `expected`.
    fn update_row(
        conn: &mut PgConnection,
        id: Uuid,
        expected: i32,
        write: &Self::Write,
    ) -> QueryResult<Option<Self::Row>>;
}

/// Writes [`Statements`] for `$repo` on the schema table `$table`. The row's record
/// fields (`id`, `version`, `patient_id`) are read from the record itself, or from its
/// field `head` when given.
macro_rules! statements {
    ($repo:ty, $table:ident $(, head = $head:ident)?) => {
        const _: () = {
            use $crate::db::records::{RecordTable, Shapes, Statements};
            use $crate::db::schema::$table as t;
            use $crate::db::scope::ScopeSql;
            use $crate::domain::{PatientId, RecordId};
            use $crate::error::AppError;
            use $crate::policy::SearchScope;
            use ::diesel::prelude::*;
            use ::uuid::Uuid;
            type Row = <$repo as Shapes>::Row;
            type Write = <$repo as Shapes>::Write;
            type Rec = <$repo as Shapes>::Record;

            impl Statements for $repo {
                fn key_version(row: &Row) -> i32 {
                    row.key_version
                }
                fn id(r: &Rec) -> RecordId {
                    RecordId(r $(.$head)? .id)
                }
                fn version(r: &Rec) -> i32 {
                    r $(.$head)? .version
                }
                fn subject(r: &Rec) -> PatientId {
                    r $(.$head)? .patient_id
                }
                fn new_subject(new: &<$repo as Shapes>::New) -> PatientId {
                    new.patient_id
                }
                fn patient_of(
                    conn: &mut PgConnection,
                    id: RecordId,
                ) -> Result<Option<PatientId>, AppError> {
                    Ok(t::table
                        .filter(t::id.eq(id))
                        .filter(t::deleted_at.is_null())
                        .select(t::patient_id)
                        .first(conn)
                        .optional()?)
                }
                fn patient_of_any(
                    conn: &mut PgConnection,
                    id: RecordId,
                ) -> Result<Option<PatientId>, AppError> {
                    Ok(t::table
                        .filter(t::id.eq(id))
                        .select(t::patient_id)
                        .first(conn)
                        .optional()?)
                }
                fn soft_delete(conn: &mut PgConnection, id: RecordId) -> Result<bool, AppError> {
                    let n = diesel::update(
                        t::table.filter(t::id.eq(id).and(t::deleted_at.is_null())),
                    )
                    .set((
                        t::deleted_at.eq(::chrono::Utc::now()),
                        t::version.eq(t::version + 1),
                        t::updated_at.eq(::chrono::Utc::now()),
                    ))
                    .execute(conn)?;
                    Ok(n > 0)
                }
                fn live_row(conn: &mut PgConnection, id: Uuid) -> QueryResult<Option<Row>> {
                    t::table
                        .filter(t::id.eq(id))
                        .filter(t::deleted_at.is_null())
                        .select(Row::as_select())
                        .first(conn)
                        .optional()
                }
                fn page(
                    conn: &mut PgConnection,
                    criteria: &<$repo as RecordTable>::Criteria,
                    scope: SearchScope,
                    page: $crate::db::records::Page,
                ) -> QueryResult<Vec<Row>> {
                    use diesel::dsl::sql;
                    use diesel::sql_types::{Bool, Timestamptz, Uuid as SqlUuid};
                    let scope = ScopeSql::new(scope, concat!(stringify!($table), ".patient_id"));
                    let q = t::table
                        .filter(t::deleted_at.is_null())
                        .into_boxed()
                        .filter(scope.expression());
                    let mut q = <$repo as RecordTable>::filter(q, criteria);
                    let Some(sort) = page.sort else {
                        if let Some(a) = page.after {
                            q = q.filter(t::id.gt(a.id));
                        }
                        return q.order(t::id).limit(page.limit).select(Row::as_select()).load(conn);
                    };
                    // Only fixed column names from the table's declaration reach the SQL;
                    // the position's values are bind parameters.
                    let table = stringify!($table);
                    let column = <$repo as RecordTable>::sort_column(sort.key).ok_or_else(|| {
                        diesel::result::Error::QueryBuilderError("sort key not offered".into())
                    })?;
                    let column = format!("{table}.{column}");
                    let id = format!("{table}.id");
                    let no_value = || {
                        diesel::result::Error::QueryBuilderError("cursor has no sort value".into())
                    };
                    let Some((then_key, _)) = sort.then else {
                        if let Some(a) = page.after {
                            let at = a.at.ok_or_else(no_value)?;
                            q = q.filter(
                                sql::<Bool>(&format!("({column}, {id}) {} (", sort.after_op()))
                                    .bind::<Timestamptz, _>(at)
                                    .sql(", ")
                                    .bind::<SqlUuid, _>(a.id)
                                    .sql(")"),
                            );
                        }
                        return q
                            .order(sql::<Bool>(&sort.order_sql(&column, &id)))
                            .limit(page.limit)
                            .select(Row::as_select())
                            .load(conn);
                    };
                    let second = <$repo as RecordTable>::sort_column(then_key).ok_or_else(|| {
                        diesel::result::Error::QueryBuilderError("sort key not offered".into())
                    })?;
                    let second = format!("{table}.{second}");
                    if let Some(a) = page.after {
                        // After (a, b, id) in the order (first, second, id) with the two
                        // directions: a later first value, or the same one and a later
                        // (second, id) in the second key's direction.
                        let at = a.at.ok_or_else(no_value)?;
                        let then_at = a.then_at.ok_or_else(no_value)?;
                        let first_op = sort.after_op();
                        let then_op = sort.then_after_op();
                        q = q.filter(
                            sql::<Bool>(&format!("({column} {first_op} "))
                                .bind::<Timestamptz, _>(at)
                                .sql(&format!(" OR ({column} = "))
                                .bind::<Timestamptz, _>(at)
                                .sql(&format!(" AND ({second}, {id}) {then_op} ("))
                                .bind::<Timestamptz, _>(then_at)
                                .sql(", ")
                                .bind::<SqlUuid, _>(a.id)
                                .sql(")))"),
                        );
                    }
                    q.order(sql::<Bool>(&sort.order_sql_then(&column, &second, &id)))
                        .limit(page.limit)
                        .select(Row::as_select())
                        .load(conn)
                }
                fn count(
                    conn: &mut PgConnection,
                    criteria: &<$repo as RecordTable>::Criteria,
                    scope: SearchScope,
                ) -> QueryResult<i64> {
                    let scope = ScopeSql::new(scope, concat!(stringify!($table), ".patient_id"));
                    let q = t::table
                        .filter(t::deleted_at.is_null())
                        .into_boxed()
                        .filter(scope.expression());
                    <$repo as RecordTable>::filter(q, criteria).count().get_result(conn)
                }
                fn current_version(conn: &mut PgConnection, id: Uuid) -> QueryResult<Option<i32>> {
                    t::table
                        .filter(t::id.eq(id))
                        .filter(t::deleted_at.is_null())
                        .select(t::version)
                        .for_update()
                        .first(conn)
                        .optional()
                }
                fn insert_row(conn: &mut PgConnection, id: Uuid, write: &Write) -> QueryResult<Row> {
                    diesel::insert_into(t::table)
                        .values((t::id.eq(id), write))
                        .returning(Row::as_returning())
                        .get_result(conn)
                }
                fn update_row(
                    conn: &mut PgConnection,
                    id: Uuid,
                    expected: i32,
                    write: &Write,
                ) -> QueryResult<Option<Row>> {
                    diesel::update(
                        t::table.filter(
                            t::id
                                .eq(id)
                                .and(t::version.eq(expected))
                                .and(t::patient_id.eq(write.patient_id))
                                .and(t::deleted_at.is_null()),
                        ),
                    )
                    .set((
                        t::version.eq(expected + 1),
                        t::updated_at.eq(::chrono::Utc::now()),
                        write,
                    ))
                    .returning(Row::as_returning())
                    .get_result(conn)
                    .optional()
                }
            }
        };
    };
}
pub(crate) use statements;

/// Declares a record table's four structs from one field list: the body to write (`Debug`
/// shows no PHI), the opened record (PHI as [`Phi`](crate::crypto::Phi)), the stored row
/// and the write, with `Write::seal` and `Row::open`. Every table also has `id`, `version`,
/// `key_version`, the subject `patient_id` and its timestamps. `kept` fields are set at
/// creation and kept by updates (like the subject); `clear` fields are stored as they
/// are; each `sealed` field is stored in the named column under its sealed-column
/// constant (the AAD), `sealed_opt` ones may be absent.
macro_rules! record_structs {
    (
        table $table:ident;
        repo $Repo:ident;
        $(#[$new_doc:meta])* new $New:ident;
        $(#[$rec_doc:meta])* record $Record:ident;
        row $Row:ident;
        write $Write:ident;
        kept { $($kept:ident: $kept_ty:ty),* $(,)? }
        clear { $($clear:ident: $clear_ty:ty),* $(,)? }
        sealed { $($sealed:ident: $sealed_ty:ty => $sealed_col:ident @ $sealed_at:path),* $(,)? }
        sealed_opt { $($opt:ident: $opt_ty:ty => $opt_col:ident @ $opt_at:path),* $(,)? }
    ) => {
        $(#[$new_doc])*
        #[derive(Clone)]
        pub struct $New {
            pub patient_id: crate::domain::PatientId,
            $(pub $kept: $kept_ty,)*
            $(pub $clear: $clear_ty,)*
            $(pub $sealed: $sealed_ty,)*
            $(pub $opt: Option<$opt_ty>,)*
        }

        impl ::std::fmt::Debug for $New {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.debug_struct(stringify!($New))
                    .field("patient_id", &self.patient_id)
                    .finish_non_exhaustive()
            }
        }

        $(#[$rec_doc])*
        #[derive(Clone, Debug)]
        pub struct $Record {
            pub id: ::uuid::Uuid,
            pub version: i32,
            pub key_version: i32,
            pub patient_id: crate::domain::PatientId,
            $(pub $kept: $kept_ty,)*
            $(pub $clear: $clear_ty,)*
            $(pub $sealed: crate::crypto::Phi<$sealed_ty>,)*
            $(pub $opt: Option<crate::crypto::Phi<$opt_ty>>,)*
            pub created_at: ::chrono::DateTime<::chrono::Utc>,
            pub updated_at: ::chrono::DateTime<::chrono::Utc>,
            pub deleted_at: Option<::chrono::DateTime<::chrono::Utc>>,
        }

        #[derive(::diesel::Queryable, ::diesel::Selectable)]
        #[diesel(table_name = crate::db::schema::$table, check_for_backend(::diesel::pg::Pg))]
        pub struct $Row {
            id: ::uuid::Uuid,
            version: i32,
            key_version: i32,
            patient_id: crate::domain::PatientId,
            $($kept: $kept_ty,)*
            $($clear: $clear_ty,)*
            $($sealed_col: Vec<u8>,)*
            $($opt_col: Option<Vec<u8>>,)*
            created_at: ::chrono::DateTime<::chrono::Utc>,
            updated_at: ::chrono::DateTime<::chrono::Utc>,
            deleted_at: Option<::chrono::DateTime<::chrono::Utc>>,
        }

        #[derive(::diesel::Insertable, ::diesel::AsChangeset)]
        #[diesel(table_name = crate::db::schema::$table, treat_none_as_null = true)]
        pub struct $Write {
            key_version: i32,
            #[diesel(skip_update)]
            patient_id: crate::domain::PatientId,
            $(#[diesel(skip_update)] $kept: $kept_ty,)*
            $($clear: $clear_ty,)*
            $($sealed_col: Vec<u8>,)*
            $($opt_col: Option<Vec<u8>>,)*
        }

        impl crate::db::records::Shapes for $Repo {
            type Row = $Row;
            type Write = $Write;
            type New = $New;
            type Record = $Record;

            #[allow(clippy::clone_on_copy)]
            fn seal(
                new: &$New,
                sealer: &crate::crypto::Sealer,
                id: ::uuid::Uuid,
            ) -> Result<$Write, crate::error::AppError> {
                Ok($Write {
                    key_version: sealer.version(),
                    patient_id: new.patient_id,
                    $($kept: new.$kept.clone(),)*
                    $($clear: new.$clear.clone(),)*
                    $($sealed_col: sealer.seal_value(&$sealed_at.at(id), &new.$sealed)?,)*
                    $($opt_col: new
                        .$opt
                        .as_ref()
                        .map(|v| sealer.seal_value(&$opt_at.at(id), v))
                        .transpose()?,)*
                })
            }

            fn open(
                row: $Row,
                kr: &crate::crypto::Keyring,
            ) -> Result<$Record, crate::error::AppError> {
                Ok($Record {
                    $($sealed: crate::db::phi::open(kr, $sealed_at, row.id, &row.$sealed_col)?,)*
                    $($opt: crate::db::phi::open_opt(kr, $opt_at, row.id, row.$opt_col.as_deref())?,)*
                    id: row.id,
                    version: row.version,
                    key_version: row.key_version,
                    patient_id: row.patient_id,
                    $($kept: row.$kept,)*
                    $($clear: row.$clear,)*
                    created_at: row.created_at,
                    updated_at: row.updated_at,
                    deleted_at: row.deleted_at,
                })
            }

            fn updated_at(record: &$Record) -> ::chrono::DateTime<::chrono::Utc> {
                record.updated_at
            }
        }
    };
}
pub(crate) use record_structs;

/// Narrows the boxed query `q` by date parameters on `table::column`: each parameter is
/// any of its values (an AND of ORs of [`TimeRange`]s). A macro because Diesel's
/// expressions are typed per column.
macro_rules! time_filter {
    ($q:expr, $table:ident :: $column:ident, $dates:expr) => {{
        use ::diesel::prelude::*;
        type Cond = Box<
            dyn ::diesel::BoxableExpression<
                    $table::table,
                    ::diesel::pg::Pg,
                    SqlType = ::diesel::sql_types::Bool,
                >,
        >;
        let condition = |r: &$crate::db::records::TimeRange| -> Cond {
            let mut c: Cond = Box::new(::diesel::dsl::sql::<::diesel::sql_types::Bool>("TRUE"));
            if let Some(from) = r.from {
                c = Box::new(c.and($table::$column.ge(from)));
            }
            if let Some(until) = r.until {
                c = Box::new(c.and($table::$column.lt(until)));
            }
            if r.outside {
                Box::new(::diesel::dsl::not(c))
            } else {
                c
            }
        };
        let mut q = $q;
        for any in $dates {
            if let Some(either) = any
                .iter()
                .map(condition)
                .reduce(|a, c| -> Cond { Box::new(a.or(c)) })
            {
                q = q.filter(either);
            }
        }
        q
    }};
}
pub(crate) use time_filter;

/// Opens rows (loading each one's key version first) and what `fields` asks beyond them.
fn open_rows<T: Statements>(
    conn: &mut PgConnection,
    kr: &Keyring,
    rows: Vec<T::Row>,
    fields: T::Fields,
) -> Result<Vec<T::Record>, AppError> {
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        kr.ensure_version(conn, T::key_version(&row))?;
        out.push(T::open(row, kr)?);
    }
    T::load(conn, kr, &mut out, fields)?;
    Ok(out)
}

/// A live record.
pub fn get<T: Statements>(
    conn: &mut PgConnection,
    kr: &Keyring,
    id: RecordId,
    fields: T::Fields,
) -> Result<Option<T::Record>, AppError> {
    match T::live_row(conn, id.into())? {
        None => Ok(None),
        Some(row) => Ok(open_rows::<T>(conn, kr, vec![row], fields)?.pop()),
    }
}

/// How many live records within `scope` match `criteria`.
pub fn count<T: Statements>(
    conn: &mut PgConnection,
    criteria: &T::Criteria,
    scope: SearchScope,
) -> Result<i64, AppError> {
    Ok(T::count(conn, criteria, scope)?)
}

/// One page of live records within `scope`, in `page`'s order.
pub fn search<T: Statements>(
    conn: &mut PgConnection,
    kr: &Keyring,
    criteria: &T::Criteria,
    scope: SearchScope,
    page: Page,
    fields: T::Fields,
) -> Result<Vec<T::Record>, AppError> {
    let rows = T::page(conn, criteria, scope, page)?;
    open_rows::<T>(conn, kr, rows, fields)
}

/// Seals and inserts a record in one transaction.
pub fn insert<T: Statements>(
    conn: &mut PgConnection,
    kr: &Keyring,
    new: &T::New,
) -> Result<T::Record, AppError> {
    insert_with_id::<T>(conn, kr, Uuid::new_v4(), new)
}

/// Seals and inserts a record in one transaction, under `id`.
pub fn insert_with_id<T: Statements>(
    conn: &mut PgConnection,
    kr: &Keyring,
    id: Uuid,
    new: &T::New,
) -> Result<T::Record, AppError> {
    conn.transaction(|conn| {
        let sealer = kr.sealer_for_write(conn)?;
        let write = T::seal(new, &sealer, id)?;
        let row = T::insert_row(conn, id, &write)?;
        written::<T>(conn, kr, &sealer, row, new, false)
    })
}

/// Replaces a record (same subject) if its version is still `expected`; every sealed
/// column is re-sealed with the active key. `None`: the version no longer matches or the
/// record is gone.
pub fn update<T: Statements>(
    conn: &mut PgConnection,
    kr: &Keyring,
    id: RecordId,
    expected: Option<i32>,
    new: &T::New,
) -> Result<Option<T::Record>, AppError> {
    let id = Uuid::from(id);
    conn.transaction(|conn| {
        // Without If-Match, the update applies to the version it finds (locked).
        let expected = match expected {
            Some(v) => v,
            None => match T::current_version(conn, id)? {
                Some(v) => v,
                None => return Ok(None),
            },
        };
        let sealer = kr.sealer_for_write(conn)?;
        let write = T::seal(new, &sealer, id)?;
        match T::update_row(conn, id, expected, &write)? {
            None => Ok(None),
            Some(row) => written::<T>(conn, kr, &sealer, row, new, true).map(Some),
        }
    })
}

/// The record as written: its row opened, and what belongs to it written.
fn written<T: Statements>(
    conn: &mut PgConnection,
    kr: &Keyring,
    sealer: &Sealer,
    row: T::Row,
    new: &T::New,
    replace: bool,
) -> Result<T::Record, AppError> {
    kr.ensure_version(conn, T::key_version(&row))?;
    let mut record = T::open(row, kr)?;
    T::write_more(conn, sealer, &mut record, new, replace)?;
    Ok(record)
}
