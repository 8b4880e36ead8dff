//! Each FHIR resource type described once: the interactions it supports and its search
//! parameters (name and FHIR search-parameter type). The CapabilityStatement is built from
//! these descriptors, and every search handler accepts exactly the parameters listed here
//! (plus the opaque paging cursor); the route table registers one route per interaction
//! listed here (`app::routes`), and a test holds the two equal.

pub use crate::db::records::SortKey;
use crate::policy::{Interaction, ResourceType};

/// One search parameter: its name and FHIR search-parameter type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SearchParam {
    pub name: &'static str,
    pub kind: &'static str,
}

const fn param(name: &'static str, kind: &'static str) -> SearchParam {
    SearchParam { name, kind }
}

/// The paging cursor a searchset's `next` link carries: accepted by every search, not
/// listed in the CapabilityStatement (clients follow the link, they do not build it).
pub const CURSOR: &str = "_cursor";
/// `_total` (`none`, `estimate`, `accurate`) and `_summary` (`count`, `false`): accepted by
/// every search.
pub const TOTAL: &str = "_total";
pub const SUMMARY: &str = "_summary";
/// `_sort=[-]<key>` over one of [`Descriptor::sorts`].
pub const SORT: &str = "_sort";
/// `_revinclude=<type>:patient` (see [`Descriptor::revincludes`]).
pub const REVINCLUDE: &str = "_revinclude";
/// At most this many resources `_revinclude` adds to one page (over all its values); a
/// page that would have more says so in an OperationOutcome entry.
pub const REVINCLUDE_MAX: usize = 50;
/// `_include=<type>:patient` (see [`Descriptor::includes`]).
pub const INCLUDE: &str = "_include";

/// A top-level element a caller may name in `_elements`, and the JSON keys it selects
/// (a choice element such as `value[x]` may be named by its base or a concrete name).
pub type Element = (&'static str, &'static [&'static str]);

/// What the API offers for one resource type.
#[derive(Debug)]
pub struct Descriptor {
    pub kind: ResourceType,
    /// The type's routes: `/fhir/<type>` (search, create) and `/fhir/<type>/{id}` (read,
    /// update, delete), registered from [`Self::interactions`] by the route table.
    pub path: &'static str,
    pub item_path: &'static str,
    /// `/fhir/<type>/_search`: search by `POST` with a form body (keeps identifiers such
    /// as SSNs out of URLs and logs).
    pub search_path: &'static str,
    /// `/fhir/Patient/{id}/$everything` (Patient only), served with the read interaction.
    pub everything_path: Option<&'static str>,
    /// `/fhir/<type>/{id}/_history` and `/fhir/<type>/{id}/_history/{vid}`: the instance
    /// history and vread, served with the read interaction.
    pub history_path: &'static str,
    pub vread_path: &'static str,
    pub interactions: &'static [Interaction],
    pub search: &'static [SearchParam],
    /// The top-level elements it returns (besides `resourceType`, `id` and `meta`).
    pub elements: &'static [Element],
    /// The JSON keys of the elements R4 requires (cardinality 1..): `_elements` always
    /// keeps them, so that a subsetted resource still validates.
    pub mandatory: &'static [&'static str],
    /// The JSON keys of the R4 summary elements (`_summary=true`).
    pub summary: &'static [&'static str],
    /// `_include` values (`<type>:<reference parameter>`) a search accepts: each names
    /// the subject Patient of the matches.
    pub includes: &'static [&'static str],
    /// Modified search parameters it accepts besides [`Self::search`] (`family:exact`);
    /// any other modifier of a listed parameter is a 400 (see [`super::params`]).
    pub modifiers: &'static [&'static str],
    /// `_sort` keys (each a timestamp in clear; sealed fields cannot be sorted).
    pub sorts: &'static [(&'static str, SortKey)],
    /// `_revinclude` values (`<type>:<reference parameter>`, Patient only): the records of
    /// that type whose subject is one of the matches.
    pub revincludes: &'static [&'static str],
}

impl Descriptor {
    /// Every query parameter a search of this type accepts.
    pub fn accepted(&self) -> Vec<&'static str> {
        let include = (!self.includes.is_empty()).then_some(INCLUDE);
        let revinclude = (!self.revincludes.is_empty()).then_some(REVINCLUDE);
        self.search
            .iter()
            .map(|p| p.name)
            .chain(self.modifiers.iter().copied())
            .chain([CURSOR, TOTAL, SUMMARY])
            .chain(include)
            .chain(revinclude)
            .collect()
    }
}

use Interaction::{Create, Delete, Read, Search, Update};

const COUNT: SearchParam = param("_count", "number");
const ELEMENTS: SearchParam = param("_elements", "special");
const SORT_PARAM: SearchParam = param(SORT, "special");
const LAST_UPDATED: (&str, SortKey) = ("_lastUpdated", SortKey::LastUpdated);

pub const PATIENT: Descriptor = Descriptor {
    kind: ResourceType::Patient,
    path: "/fhir/Patient",
    item_path: "/fhir/Patient/{id}",
    search_path: "/fhir/Patient/_search",
    everything_path: Some("/fhir/Patient/{id}/$everything"),
    history_path: "/fhir/Patient/{id}/_history",
    vread_path: "/fhir/Patient/{id}/_history/{vid}",
    interactions: &[Search, Create, Read, Update],
    search: &[
        param("family", "string"),
        param("given", "string"),
        param("birthdate", "date"),
        param("identifier", "token"),
        COUNT,
        ELEMENTS,
        SORT_PARAM,
    ],
    elements: &[
        ("identifier", &["identifier"]),
        ("name", &["name"]),
        ("gender", &["gender"]),
        ("birthDate", &["birthDate"]),
        ("telecom", &["telecom"]),
        ("address", &["address"]),
        ("managingOrganization", &["managingOrganization"]),
    ],
    mandatory: &[],
    summary: &[
        "identifier",
        "name",
        "gender",
        "birthDate",
        "telecom",
        "address",
        "managingOrganization",
    ],
    includes: &[],
    modifiers: &[
        "family:exact",
        "given:exact",
        "family:contains",
        "given:contains",
    ],
    sorts: &[LAST_UPDATED],
    revincludes: &[
        "Observation:patient",
        "Observation:subject",
        "DocumentReference:patient",
        "DocumentReference:subject",
        "Claim:patient",
    ],
};

pub const OBSERVATION: Descriptor = Descriptor {
    kind: ResourceType::Observation,
    path: "/fhir/Observation",
    item_path: "/fhir/Observation/{id}",
    search_path: "/fhir/Observation/_search",
    everything_path: None,
    history_path: "/fhir/Observation/{id}/_history",
    vread_path: "/fhir/Observation/{id}/_history/{vid}",
    interactions: &[Search, Create, Read, Update, Delete],
    search: &[
        param("patient", "reference"),
        param("subject", "reference"),
        param("code", "token"),
        param("date", "date"),
        COUNT,
        ELEMENTS,
        SORT_PARAM,
    ],
    elements: &[
        ("status", &["status"]),
        ("code", &["code"]),
        ("subject", &["subject"]),
        ("effective", &["effectiveDateTime"]),
        ("effectiveDateTime", &["effectiveDateTime"]),
        ("value", &["valueQuantity", "valueString"]),
        ("valueQuantity", &["valueQuantity"]),
        ("valueString", &["valueString"]),
    ],
    mandatory: &["status", "code"],
    summary: &[
        "status",
        "code",
        "subject",
        "effectiveDateTime",
        "valueQuantity",
        "valueString",
    ],
    includes: &["Observation:patient", "Observation:subject"],
    modifiers: &[],
    sorts: &[LAST_UPDATED, ("date", SortKey::Date)],
    revincludes: &[],
};

pub const DOCUMENT_REFERENCE: Descriptor = Descriptor {
    kind: ResourceType::DocumentReference,
    path: "/fhir/DocumentReference",
    item_path: "/fhir/DocumentReference/{id}",
    search_path: "/fhir/DocumentReference/_search",
    everything_path: None,
    history_path: "/fhir/DocumentReference/{id}/_history",
    vread_path: "/fhir/DocumentReference/{id}/_history/{vid}",
    interactions: &[Search, Create, Read, Update],
    search: &[
        param("patient", "reference"),
        param("subject", "reference"),
        COUNT,
        ELEMENTS,
        SORT_PARAM,
    ],
    elements: &[
        ("status", &["status"]),
        ("type", &["type"]),
        ("subject", &["subject"]),
        ("date", &["date"]),
        ("author", &["author"]),
        ("content", &["content"]),
    ],
    mandatory: &["status", "content"],
    summary: &["status", "type", "subject", "date", "author", "content"],
    includes: &["DocumentReference:patient", "DocumentReference:subject"],
    modifiers: &[],
    sorts: &[LAST_UPDATED],
    revincludes: &[],
};

pub const CLAIM: Descriptor = Descriptor {
    kind: ResourceType::Claim,
    path: "/fhir/Claim",
    item_path: "/fhir/Claim/{id}",
    search_path: "/fhir/Claim/_search",
    everything_path: None,
    history_path: "/fhir/Claim/{id}/_history",
    vread_path: "/fhir/Claim/{id}/_history/{vid}",
    interactions: &[Search, Create, Read, Update, Delete],
    search: &[
        param("patient", "reference"),
        param("status", "token"),
        COUNT,
        ELEMENTS,
        SORT_PARAM,
    ],
    elements: &[
        ("status", &["status"]),
        ("type", &["type"]),
        ("use", &["use"]),
        ("patient", &["patient"]),
        ("created", &["created"]),
        ("provider", &["provider"]),
        ("priority", &["priority"]),
        ("insurance", &["insurance"]),
        ("total", &["total"]),
        ("item", &["item"]),
    ],
    mandatory: &[
        "status",
        "type",
        "use",
        "patient",
        "created",
        "provider",
        "priority",
        "insurance",
    ],
    // Claim.item is not a summary element.
    summary: &[
        "status",
        "type",
        "use",
        "patient",
        "created",
        "provider",
        "priority",
        "insurance",
        "total",
    ],
    includes: &["Claim:patient"],
    modifiers: &[],
    sorts: &[LAST_UPDATED],
    revincludes: &[],
};

/// Every resource type the API serves, in CapabilityStatement order.
pub const ALL: [&Descriptor; 4] = [&PATIENT, &OBSERVATION, &DOCUMENT_REFERENCE, &CLAIM];

/// The descriptor of `kind`.
pub fn of(kind: ResourceType) -> &'static Descriptor {
    match kind {
        ResourceType::Patient => &PATIENT,
        ResourceType::Observation => &OBSERVATION,
        ResourceType::DocumentReference => &DOCUMENT_REFERENCE,
        ResourceType::Claim => &CLAIM,
    }
}

// ---------------------------------------------------------------------------------------
// The resource abstraction and its generic handlers.

use super::bundle::{self, Cursor};
use super::config::FhirSettings;
use super::elements::Elements;
use super::types::invalid;
use super::{FHIR_JSON, Prefer, etag, if_match, negotiate, params};
use crate::access::refusal::{self, FieldUse};
use crate::access::{Credentials, Pipeline, Principal};
use crate::audit::AuditEvent;
use crate::crypto::Keyring;
use crate::db::history;
use crate::db::records::{self, Page, Position, RecordTable, Shapes, Sort, Statements};
use crate::domain::{PatientId, RecordId, UserId};
use crate::error::AppError;
use crate::policy::{Decision, PatientFacts, SearchScope, Target, View};
use crate::state::AppState;
use crate::web::json::JsonBody;
use actix_web::http::StatusCode;
use actix_web::http::header::{CONTENT_LOCATION, HeaderValue, LAST_MODIFIED, LOCATION};
use actix_web::{HttpRequest, HttpResponse, web};
use diesel::PgConnection;
use serde::de::DeserializeOwned;
use serde_json::Value;
use uuid::Uuid;

/// One FHIR resource type: its descriptor, its input and validation, its FHIR form, which
/// fields a view fetches, and its storage. The generic handlers below ([`read`],
/// [`search`], [`create`], [`update`], [`delete`]) run every interaction through the
/// access pipeline on the route's action; a resource module only describes itself.
// Used only by our own handlers, which need no `Send` bound on the futures.
#[allow(async_fn_in_trait)]
pub trait FhirResource: 'static {
    const DESCRIPTOR: &'static Descriptor;
    /// The JSON field naming the subject patient (where a create's refusal points).
    const SUBJECT_FIELD: &'static str;
    /// The body of a create or update.
    type Input: DeserializeOwned + 'static;
    /// A validated body.
    type New: Send + 'static;
    /// A stored record, shaped to the principal's view.
    type Record: Send + 'static;
    /// Parsed search criteria.
    type Criteria: Send + 'static;
    /// What to fetch for a view (and `_elements`): never more than the view.
    type Fields: Copy + Send + 'static;

    /// The fields of `view` that `elements` asks for; an error for a foreign view.
    fn fields(view: View, elements: &Elements) -> Result<Self::Fields, AppError>;
    /// The `id` of a body.
    fn input_id(input: &Self::Input) -> Option<&str>;
    fn validate(input: Self::Input, principal: &Principal) -> Result<Self::New, AppError>;
    /// The search criteria from the query (each name is one of the descriptor's).
    fn criteria(params: &[(&'static str, String)]) -> Result<Self::Criteria, AppError>;
    fn to_fhir(record: &Self::Record) -> Value;
    fn id(record: &Self::Record) -> RecordId;
    fn version(record: &Self::Record) -> i32;
    /// The subject patient of a record.
    fn subject(record: &Self::Record) -> PatientId;

    /// The patient a validated body is about.
    fn new_subject(new: &Self::New) -> PatientId;

    /// Every field (what the history keeps of each version).
    fn full_fields() -> Self::Fields;

    /// A stored version's FHIR JSON (every field) cut down to the view's `fields`: by
    /// default unchanged (the resource has one view, the whole resource).
    fn shape(json: Value, _fields: Self::Fields) -> Value {
        json
    }

    /// The subject patient of a record, live or deleted (for history, vread and the 410
    /// of a deleted record); by default [`FhirResource::patient_of`].
    fn patient_of_any(
        conn: &mut PgConnection,
        id: RecordId,
    ) -> Result<Option<PatientId>, AppError> {
        Self::patient_of(conn, id)
    }

    /// The permit to create `new`: by default, the decision on its subject patient.
    async fn authorize_create(pipeline: &Pipeline, new: &mut Self::New) -> Result<View, AppError> {
        pipeline
            .authorize_create(Self::SUBJECT_FIELD, Self::new_subject(new))
            .await
    }

    /// After the update permit: `new` must fit the record it replaces (same subject).
    fn check_update(new: &mut Self::New, facts: &PatientFacts) -> Result<(), AppError> {
        if Self::new_subject(new) == facts.patient_id {
            Ok(())
        } else {
            Err(invalid(
                Self::SUBJECT_FIELD,
                "cannot be changed by an update",
            ))
        }
    }

    /// Field-level write control: the first field `new` writes that the writer's view
    /// (`view`: [`FhirResource::fields`] of the permitted view) does not contain. Such a
    /// write is refused (403 naming the field); an update keeps the stored values of the
    /// fields outside the view ([`FhirResource::update`] gets the view's fields). By
    /// default none: the resource has one view, the whole resource.
    fn written_outside(_new: &Self::New, _view: Self::Fields) -> Option<&'static str> {
        None
    }

    /// The first field the search `criteria` test that the view does not contain: such a
    /// search is refused like reading the field (it would tell which record holds a
    /// value the caller may not see). By default none.
    fn searched_outside(_criteria: &Self::Criteria, _view: Self::Fields) -> Option<&'static str> {
        None
    }

    /// What an update that found no row at the expected version answers.
    fn update_missed() -> AppError {
        params::precondition_failed()
    }

    // Storage (parameterised queries in db/).
    /// The subject patient of a live record.
    fn patient_of(conn: &mut PgConnection, id: RecordId) -> Result<Option<PatientId>, AppError>;
    fn get(
        conn: &mut PgConnection,
        kr: &Keyring,
        id: RecordId,
        fields: Self::Fields,
    ) -> Result<Option<Self::Record>, AppError>;
    fn search(
        conn: &mut PgConnection,
        kr: &Keyring,
        criteria: &Self::Criteria,
        scope: SearchScope,
        page: Page,
        fields: Self::Fields,
    ) -> Result<Vec<Self::Record>, AppError>;
    /// A record's value of a sort key (the next page's cursor carries it).
    fn sort_value(record: &Self::Record, key: SortKey) -> Option<chrono::DateTime<chrono::Utc>>;
    /// How many live records within `scope` match `criteria`.
    fn count(
        conn: &mut PgConnection,
        kr: &Keyring,
        criteria: &Self::Criteria,
        scope: SearchScope,
    ) -> Result<i64, AppError>;
    fn insert(
        conn: &mut PgConnection,
        kr: &Keyring,
        new: &Self::New,
        author: UserId,
        fields: Self::Fields,
    ) -> Result<Self::Record, AppError>;
    /// Replaces the record if its version is still `expected` (`None` otherwise; no
    /// `expected`: whatever version it has); writes only the fields of the writer's view
    /// (`fields`) and keeps the others as stored.
    fn update(
        conn: &mut PgConnection,
        kr: &Keyring,
        id: RecordId,
        expected: Option<i32>,
        new: &Self::New,
        fields: Self::Fields,
    ) -> Result<Option<Self::Record>, AppError>;
    /// Soft delete (`false`: no such live record).
    fn delete(conn: &mut PgConnection, id: RecordId) -> Result<bool, AppError>;
}

/// A record of a patient (Observation, DocumentReference, Claim): what its module
/// declares — descriptor, input and validation, search criteria, FHIR form — over its
/// table's repository ([`crate::db::records`]). Every such resource is a [`FhirResource`]
/// through the implementation below: its storage, ids, versions and subject come from the
/// table, its create is decided on its subject patient, and an update keeps the subject.
pub trait RecordResource: 'static {
    const DESCRIPTOR: &'static Descriptor;
    /// The JSON field naming the subject patient (where a create's refusal points).
    const SUBJECT_FIELD: &'static str = "subject.reference";
    /// The body of a create or update.
    type Input: DeserializeOwned + 'static;
    /// The table's repository.
    type Table: Statements;

    /// What to fetch for a view (and `_elements`): by default, the whole resource, which
    /// must be the view's.
    fn fields(view: View, _elements: &Elements) -> Result<Fields<Self>, AppError> {
        super::whole_view(<Self as RecordResource>::DESCRIPTOR.kind, view)?;
        Ok(Default::default())
    }
    /// The `id` of a body.
    fn input_id(input: &Self::Input) -> Option<&str>;
    fn validate(input: Self::Input, principal: &Principal) -> Result<New<Self>, AppError>;
    /// The search criteria from the query (each name is one of the descriptor's).
    fn criteria(params: &[(&'static str, String)]) -> Result<Criteria<Self>, AppError>;
    fn to_fhir(record: &Rec<Self>) -> Value;
}

type Fields<R> = <<R as RecordResource>::Table as RecordTable>::Fields;
type New<R> = <<R as RecordResource>::Table as Shapes>::New;
type Rec<R> = <<R as RecordResource>::Table as Shapes>::Record;
type Criteria<R> = <<R as RecordResource>::Table as RecordTable>::Criteria;

/// The patient a search of records names by its `patient` (or `subject`) parameter; both
/// may be given if they name the same patient.
pub fn subject_criterion(params: &[(&'static str, String)]) -> Result<Option<Uuid>, AppError> {
    let mut patient = None;
    for name in ["patient", "subject"] {
        if let Some(p) = params::single(params, name)? {
            let id = params::patient_param(p)?;
            if patient.replace(id).is_some_and(|prev| prev != id) {
                return Err(invalid("patient", "names two different patients"));
            }
        }
    }
    Ok(patient)
}

impl<R: RecordResource> FhirResource for R {
    const DESCRIPTOR: &'static Descriptor = <R as RecordResource>::DESCRIPTOR;
    const SUBJECT_FIELD: &'static str = <R as RecordResource>::SUBJECT_FIELD;
    type Input = <R as RecordResource>::Input;
    type New = New<R>;
    type Record = Rec<R>;
    type Criteria = Criteria<R>;
    type Fields = Fields<R>;

    fn fields(view: View, elements: &Elements) -> Result<Fields<R>, AppError> {
        <R as RecordResource>::fields(view, elements)
    }
    fn input_id(input: &<R as RecordResource>::Input) -> Option<&str> {
        <R as RecordResource>::input_id(input)
    }
    fn validate(
        input: <R as RecordResource>::Input,
        principal: &Principal,
    ) -> Result<New<R>, AppError> {
        <R as RecordResource>::validate(input, principal)
    }
    fn criteria(params: &[(&'static str, String)]) -> Result<Criteria<R>, AppError> {
        <R as RecordResource>::criteria(params)
    }
    fn to_fhir(record: &Rec<R>) -> Value {
        <R as RecordResource>::to_fhir(record)
    }
    fn id(record: &Rec<R>) -> RecordId {
        R::Table::id(record)
    }
    fn version(record: &Rec<R>) -> i32 {
        R::Table::version(record)
    }
    fn subject(record: &Rec<R>) -> PatientId {
        R::Table::subject(record)
    }
    fn new_subject(new: &New<R>) -> PatientId {
        R::Table::new_subject(new)
    }
    fn patient_of(conn: &mut PgConnection, id: RecordId) -> Result<Option<PatientId>, AppError> {
        R::Table::patient_of(conn, id)
    }
    fn patient_of_any(
        conn: &mut PgConnection,
        id: RecordId,
    ) -> Result<Option<PatientId>, AppError> {
        R::Table::patient_of_any(conn, id)
    }
    fn full_fields() -> Fields<R> {
        R::Table::all_fields()
    }
    fn get(
        conn: &mut PgConnection,
        kr: &Keyring,
        id: RecordId,
        fields: Fields<R>,
    ) -> Result<Option<Rec<R>>, AppError> {
        records::get::<R::Table>(conn, kr, id, fields)
    }
    fn search(
        conn: &mut PgConnection,
        kr: &Keyring,
        criteria: &Criteria<R>,
        scope: SearchScope,
        page: Page,
        fields: Fields<R>,
    ) -> Result<Vec<Rec<R>>, AppError> {
        records::search::<R::Table>(conn, kr, criteria, scope, page, fields)
    }
    fn sort_value(record: &Rec<R>, key: SortKey) -> Option<chrono::DateTime<chrono::Utc>> {
        R::Table::sort_value(record, key)
    }
    fn count(
        conn: &mut PgConnection,
        _kr: &Keyring,
        criteria: &Criteria<R>,
        scope: SearchScope,
    ) -> Result<i64, AppError> {
        records::count::<R::Table>(conn, criteria, scope)
    }
    fn insert(
        conn: &mut PgConnection,
        kr: &Keyring,
        new: &New<R>,
        _author: UserId,
        _fields: Fields<R>,
    ) -> Result<Rec<R>, AppError> {
        records::insert::<R::Table>(conn, kr, new)
    }
    fn update(
        conn: &mut PgConnection,
        kr: &Keyring,
        id: RecordId,
        expected: Option<i32>,
        new: &New<R>,
        _fields: Fields<R>,
    ) -> Result<Option<Rec<R>>, AppError> {
        records::update::<R::Table>(conn, kr, id, expected, new)
    }
    /// A soft delete, for a type that offers delete (no other type has a delete route).
    fn delete(conn: &mut PgConnection, id: RecordId) -> Result<bool, AppError> {
        if <R as RecordResource>::DESCRIPTOR
            .interactions
            .contains(&Delete)
        {
            R::Table::soft_delete(conn, id)
        } else {
            Ok(false)
        }
    }
}

/// The handler's resource must be the route's (the decision was about the route's).
fn check_route<R: FhirResource>(pipeline: &Pipeline) -> Result<(), AppError> {
    if pipeline.resource()? == R::DESCRIPTOR.kind {
        Ok(())
    } else {
        Err(AppError::internal("handler for another resource type"))
    }
}

/// The absolute URL of a record's current version:
/// `<server.public_url>/fhir/<type>/<id>/_history/<version>` (served by vread).
fn record_url<R: FhirResource>(settings: &FhirSettings, r: &R::Record) -> String {
    format!(
        "{}/{}/{}/_history/{}",
        settings.base,
        R::DESCRIPTOR.kind.as_str(),
        R::id(r),
        R::version(r)
    )
}

/// A resource answer: `ETag`; on a write, `Location` and `Content-Location` (absolute, at
/// the record) and the body unless `Prefer: return=minimal`.
fn respond<R: FhirResource>(
    settings: &FhirSettings,
    status: StatusCode,
    r: &R::Record,
    e: &Elements,
    minimal: bool,
) -> HttpResponse {
    let mut res = HttpResponse::build(status);
    res.insert_header(etag(R::version(r)));
    if status == StatusCode::CREATED {
        res.insert_header((LOCATION, record_url::<R>(settings, r)));
    }
    if status != StatusCode::OK || minimal {
        res.insert_header((CONTENT_LOCATION, record_url::<R>(settings, r)));
    }
    if minimal {
        return res.finish();
    }
    res.content_type(FHIR_JSON)
        .body(e.apply(R::to_fhir(r)).to_string())
}

/// Appends the version `id` now has to the sealed history (in the write's transaction):
/// every field, whatever the writer's view.
fn record_version<R: FhirResource>(
    c: &mut PgConnection,
    kr: &Keyring,
    id: RecordId,
) -> Result<(), AppError> {
    let full = R::get(c, kr, id, R::full_fields())?
        .ok_or_else(|| AppError::internal("a written record is not readable"))?;
    let body = R::to_fhir(&full);
    let kind = R::DESCRIPTOR.kind.as_str();
    history::record(
        c,
        kr,
        kind,
        id.into(),
        R::version(&full),
        R::subject(&full),
        Some(&body),
    )
}

/// What a read found of a permitted record: the record, or that it was deleted.
enum Found<T> {
    Live(T),
    Gone,
}

fn gone() -> AppError {
    AppError::client(StatusCode::GONE, "This resource has been deleted.")
}

/// `Last-Modified` (RFC 7231 HTTP-date) of a FHIR `meta.lastUpdated`.
fn last_modified(json: &Value) -> Option<String> {
    let t = chrono::DateTime::parse_from_rfc3339(json["meta"]["lastUpdated"].as_str()?).ok()?;
    Some(
        t.with_timezone(&chrono::Utc)
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string(),
    )
}

/// Read: ONE blocking hop (principal, facts, decision, the view's fields), then the
/// group-committed audit event ([`Credentials::read_one`]).
pub async fn read<R: FhirResource>(
    req: HttpRequest,
    credentials: Credentials,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let id = params::parse_id(&path);
    // Judged after authentication, with the rest of the request's input.
    let elements = negotiate(&req).and_then(|()| params::read_elements(&req, R::DESCRIPTOR.kind));
    let kr = state.keyring.clone();
    let get = move |c: &mut PgConnection, view: View, id: RecordId, e: &Elements| {
        let fields = R::fields(view, e)?;
        match R::get(c, &kr, id, fields)? {
            Some(r) => Ok(Some((R::subject(&r), Found::Live(r)))),
            // Decided on its patient like a live one: only a caller who could read it
            // learns that it was deleted (everyone else gets the 404 of a missing id).
            None => Ok(R::patient_of_any(c, id)?.map(|p| (p, Found::Gone))),
        }
    };
    let (pipeline, found, elements) = credentials
        .read_one(id, elements, R::patient_of_any, get)
        .await?;
    check_route::<R>(&pipeline)?;
    match found {
        Found::Live(record) => {
            // The FHIR shape is built once, for the body and its Last-Modified.
            let json = R::to_fhir(&record);
            let mut res = HttpResponse::Ok();
            res.insert_header(etag(R::version(&record)));
            if let Some(t) = last_modified(&json) {
                res.insert_header((LAST_MODIFIED, t));
            }
            Ok(res
                .content_type(FHIR_JSON)
                .body(elements.apply(json).to_string()))
        }
        Found::Gone => Err(gone()),
    }
}

/// At most this many versions in an instance history.
const MAX_HISTORY: i64 = 100;

/// vread: `GET /fhir/<type>/{id}/_history/{vid}` — a version from the sealed history,
/// decided, shaped to the caller's view and audited exactly like a read of the record;
/// a deletion version is a 410.
pub async fn vread<R: FhirResource>(
    req: HttpRequest,
    credentials: Credentials,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, AppError> {
    let (raw_id, raw_vid) = path.into_inner();
    let id = params::parse_id(&raw_id);
    let input = negotiate(&req)
        .and_then(|()| params::read_elements(&req, R::DESCRIPTOR.kind))
        .and_then(|e| {
            let vid = raw_vid
                .parse::<i32>()
                .ok()
                .filter(|v| *v > 0)
                .ok_or_else(AppError::not_found)?;
            Ok((e, vid))
        });
    let kr = state.keyring.clone();
    let get = move |c: &mut PgConnection, view: View, id: RecordId, input: &(Elements, i32)| {
        let fields = R::fields(view, &input.0)?;
        let kind = R::DESCRIPTOR.kind.as_str();
        let found = history::get(c, &kr, kind, id.into(), input.1)?;
        Ok(found.map(|v| (v.patient_id, (v, fields))))
    };
    let (pipeline, (version, fields), (elements, _)) = credentials
        .read_one(id, input, R::patient_of_any, get)
        .await?;
    check_route::<R>(&pipeline)?;
    let Some(body) = version.body else {
        return Err(gone());
    };
    let body = elements.apply(R::shape(body, fields));
    let mut res = HttpResponse::Ok();
    res.insert_header(etag(version.version));
    if let Some(t) = last_modified(&body) {
        res.insert_header((LAST_MODIFIED, t));
    }
    Ok(res.content_type(FHIR_JSON).body(body.to_string()))
}

/// Instance history: `GET /fhir/<type>/{id}/_history` — a `history` Bundle of the latest
/// versions (newest first, at most 100), each shaped to the caller's view; decided and
/// audited like a read of the record. Versions written before the history existed are
/// not listed.
pub async fn history<R: FhirResource>(
    req: HttpRequest,
    credentials: Credentials,
    state: web::Data<AppState>,
    settings: web::Data<FhirSettings>,
    path: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let raw_id = path.into_inner();
    let id = params::parse_id(&raw_id);
    let input = negotiate(&req).and_then(|()| params::search_params(&req, &[]).map(drop));
    let kr = state.keyring.clone();
    let get = move |c: &mut PgConnection, view: View, id: RecordId, _: &()| {
        let fields = R::fields(view, &Elements::all())?;
        let Some(patient) = R::patient_of_any(c, id)? else {
            return Ok(None);
        };
        let kind = R::DESCRIPTOR.kind.as_str();
        let versions = history::list(c, &kr, kind, id.into(), MAX_HISTORY)?;
        Ok(Some((patient, (versions, fields))))
    };
    let (pipeline, (versions, fields), ()) = credentials
        .read_one(id, input, R::patient_of_any, get)
        .await?;
    check_route::<R>(&pipeline)?;
    let kind = R::DESCRIPTOR.kind.as_str();
    let url = format!("{}/{kind}/{raw_id}", settings.base);
    let entries: Vec<Value> = versions
        .into_iter()
        .map(|v| {
            let (method, request_url, status) = if v.deleted {
                ("DELETE", format!("{kind}/{raw_id}"), "204")
            } else if v.version == 1 {
                ("POST", kind.to_string(), "201")
            } else {
                ("PUT", format!("{kind}/{raw_id}"), "200")
            };
            let mut entry = serde_json::json!({
                "fullUrl": url,
                "request": { "method": method, "url": request_url },
                "response": {
                    "status": status,
                    "etag": format!("W/\"{}\"", v.version),
                    "lastModified": params::instant(&v.recorded_at),
                },
            });
            if let Some(body) = v.body {
                entry["resource"] = R::shape(body, fields);
            }
            entry
        })
        .collect();
    let mut bundle = serde_json::json!({
        "resourceType": "Bundle",
        "type": "history",
        "total": entries.len(),
        "link": [{ "relation": "self", "url": format!("{url}/_history") }],
    });
    if !entries.is_empty() {
        bundle["entry"] = Value::Array(entries);
    }
    Ok(HttpResponse::Ok()
        .content_type(FHIR_JSON)
        .body(bundle.to_string()))
}

/// `_total` and `_summary`: whether to count the matches, and whether to return them.
/// `_total`, `_summary` and `_elements`: whether to count the matches, whether to
/// return them, and which elements of each.
fn total_and_summary(
    kind: ResourceType,
    q: &[(&'static str, String)],
) -> Result<(bool, bool, Elements), AppError> {
    let total = match params::single(q, TOTAL)? {
        None | Some("none") => false,
        Some("estimate" | "accurate") => true,
        Some(_) => return Err(invalid(TOTAL, "must be none, estimate or accurate")),
    };
    let elements = params::single(q, "_elements")?;
    match (params::single(q, SUMMARY)?, elements) {
        (None | Some("false"), e) => Ok((total, false, Elements::parse(kind, e)?)),
        (Some("count"), _) => Ok((true, true, Elements::all())),
        (Some("true"), None) => Ok((total, false, Elements::summary(kind))),
        (Some("true"), Some(_)) => Err(invalid(SUMMARY, "cannot be combined with _elements")),
        (Some(_), _) => Err(invalid(SUMMARY, "must be true, count or false")),
    }
}

/// Search: the descriptor's parameters only (an unknown one is a 422 unless `Prefer:
/// handling=lenient`), the permit's scope in SQL (also for `total`), every patient
/// returned in the audit event, opaque cursor paging, absolute links.
pub async fn search<R: FhirResource>(
    req: HttpRequest,
    pipeline: Pipeline,
    state: web::Data<AppState>,
    settings: web::Data<FhirSettings>,
) -> Result<HttpResponse, AppError> {
    let query = req.query_string().to_string();
    search_with::<R>(&req, pipeline, &state, &settings, query, false).await
}

/// A form body, read only after the pipeline admitted the principal (see [`Body`]).
type Form = Result<web::Bytes, actix_web::Error>;

/// Search by `POST /fhir/<type>/_search` with an `application/x-www-form-urlencoded`
/// body (and possibly a query string): the same search, whose links carry no parameter
/// values (the `next` cursor carries them sealed), so that identifiers stay out of URLs.
pub async fn search_post<R: FhirResource>(
    req: HttpRequest,
    pipeline: Pipeline,
    state: web::Data<AppState>,
    settings: web::Data<FhirSettings>,
    body: Form,
) -> Result<HttpResponse, AppError> {
    let form = req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !form {
        return Err(AppError::client(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "A search by POST needs an application/x-www-form-urlencoded body.",
        ));
    }
    let body = body.map_err(|_| AppError::bad_request("The request body could not be read."))?;
    let body = std::str::from_utf8(&body)
        .map_err(|_| AppError::bad_request("The form body is not UTF-8."))?;
    let query = match (req.query_string(), body.trim()) {
        (q, "") => q.to_string(),
        ("", b) => b.to_string(),
        (q, b) => format!("{q}&{b}"),
    };
    search_with::<R>(&req, pipeline, &state, &settings, query, true).await
}

async fn search_with<R: FhirResource>(
    req: &HttpRequest,
    pipeline: Pipeline,
    state: &AppState,
    settings: &FhirSettings,
    query: String,
    post: bool,
) -> Result<HttpResponse, AppError> {
    check_route::<R>(&pipeline)?;
    negotiate(req)?;
    let kind = R::DESCRIPTOR.kind;
    let accepted = R::DESCRIPTOR.accepted();
    let lenient = Prefer::of(req).lenient;
    let user = pipeline.user.id;
    let given = params::parse_params(&query, &accepted, lenient)?;
    // A cursor from a POST search carries that search's parameters: it stands alone.
    let (q, after, carried) = match params::single(&given, CURSOR)? {
        None => (given, None, None),
        Some(c) => match Cursor::open_position(&state.keyring, user, kind, c)? {
            (after, None) => (given, Some(after), None),
            (after, Some(carried)) => {
                if given.len() > 1 {
                    return Err(invalid(
                        CURSOR,
                        "of a search by POST takes no other parameter",
                    ));
                }
                let q = params::parse_params(&carried, &accepted, true)?;
                (q, Some(after), Some(carried))
            }
        },
    };
    let post = post || carried.is_some();
    let sort = sort_of(R::DESCRIPTOR, params::single(&q, SORT)?)?;
    if after.is_some_and(|a: Position| {
        a.at.is_some() != sort.is_some()
            || a.then_at.is_some() != sort.is_some_and(|s| s.then.is_some())
    }) {
        // A cursor continues the order it was issued for, and no other.
        return Err(invalid(CURSOR, "is not a cursor this server issued to you"));
    }
    let criteria = R::criteria(&q)?;
    let count = bundle::page_size(params::single(&q, "_count")?)?;
    let (want_total, count_only, elements) = total_and_summary(kind, &q)?;
    let include = wants_include(R::DESCRIPTOR, &q)? && !count_only;
    let revinclude = revincluded_types(R::DESCRIPTOR, &q)?;
    let (view, scope) = pipeline.authorize_search().await?;
    if let Some(field) = R::searched_outside(&criteria, R::fields(view, &Elements::all())?) {
        refuse_field(&pipeline, None, [], field, FieldUse::Search).await?;
    }
    let fields = R::fields(view, &elements)?;
    let kr = state.keyring.clone();
    let limit = if count_only { 0 } else { count as i64 + 1 };
    let (rows, more, total, patients, held) = state
        .db
        .run(move |c| {
            // The count runs under the same scope as the page: it never counts a record
            // the caller could not see.
            let total = want_total
                .then(|| R::count(c, &kr, &criteria, scope))
                .transpose()?;
            let mut rows = if limit == 0 {
                Vec::new()
            } else {
                let page = Page { sort, after, limit };
                R::search(c, &kr, &criteria, scope, page, fields)?
            };
            let more = rows.len() > count;
            rows.truncate(count);
            let mut patients: Vec<PatientId> = rows.iter().map(R::subject).collect();
            patients.sort();
            patients.dedup();
            // Which of them came through a break-glass grant: in the same blocking hop.
            let held = Pipeline::held_in_scope(c, scope, &patients)?;
            Ok((rows, more, total, patients, held))
        })
        .await?;
    pipeline.permit_search(held, patients.clone()).await?;
    // What a POST search's cursor carries: its parameters, without a cursor.
    let to_carry = post.then(|| {
        let mut out = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in q.iter().filter(|(k, _)| *k != CURSOR) {
            out.append_pair(k, v);
        }
        out.finish()
    });
    let next = match (more, rows.last()) {
        (true, Some(last)) => Some(Cursor::seal_position(
            &state.keyring,
            user,
            kind,
            Position {
                id: R::id(last).into(),
                at: sort.and_then(|s| R::sort_value(last, s.key)),
                then_at: sort
                    .and_then(|s| s.then)
                    .and_then(|(key, _)| R::sort_value(last, key)),
            },
            to_carry.as_deref(),
        )?),
        _ => None,
    };
    let included = if include {
        include_patients(&pipeline, state, &patients).await?
    } else {
        Vec::new()
    };
    let (revincluded, truncated) = if count_only {
        (Vec::new(), false)
    } else {
        revinclude_records(&pipeline, state, &patients, &revinclude).await?
    };
    let entries: Vec<Value> = rows.iter().map(|r| elements.apply(R::to_fhir(r))).collect();
    let links = bundle::links(settings, kind.as_str(), &query, post, next.as_deref());
    let mut body = bundle::searchset(settings, kind.as_str(), links, entries, total);
    bundle::add_included(settings, &mut body, "Patient", included);
    for (kind, r) in revincluded {
        bundle::add_included(settings, &mut body, kind.as_str(), vec![r]);
    }
    if truncated {
        bundle::add_outcome(&mut body, REVINCLUDE_TRUNCATED);
    }
    Ok(HttpResponse::Ok()
        .content_type(FHIR_JSON)
        .body(body.to_string()))
}

/// Refused `_sort` values: one fixed message (the value is never repeated).
const SORT_REFUSED: &str = "_sort: this server sorts by one or two different keys of the resource's sort keys, comma-separated (_lastUpdated, and date where declared; '-' for descending), see the CapabilityStatement. Sealed fields (names, birth dates, identifiers) cannot be sorted: their order is not stored anywhere in clear.";

/// The order `_sort` asks for: one key the descriptor declares, or two different ones
/// (`date,-_lastUpdated`), each optionally `-`-prefixed (descending). Anything else — a
/// sealed field, an unknown key, a key twice, more than two keys, an empty key — is a 400.
fn sort_of(d: &Descriptor, value: Option<&str>) -> Result<Option<Sort>, AppError> {
    let Some(v) = value else {
        return Ok(None);
    };
    let refused = || AppError::bad_request(SORT_REFUSED);
    let key = |part: &str| {
        let (desc, name) = match part.strip_prefix('-') {
            Some(name) => (true, name),
            None => (false, part),
        };
        d.sorts
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, key)| (*key, desc))
            .ok_or_else(refused)
    };
    let mut parts = v.split(',');
    let (first, first_desc) = key(parts.next().unwrap_or_default())?;
    let then = parts.next().map(key).transpose()?;
    if parts.next().is_some() || then.is_some_and(|(k, _)| k == first) {
        return Err(refused());
    }
    Ok(Some(Sort {
        key: first,
        desc: first_desc,
        then,
    }))
}

const REVINCLUDE_TRUNCATED: &str = "_revinclude: this page's matches have more records of the included types than one page includes (50); search each type with patient=<id> to page through all of them.";

/// The resource types `_revinclude` asks for: each value must be one the descriptor
/// lists (a 422 otherwise, also for `*`).
fn revincluded_types(
    d: &Descriptor,
    q: &[(&'static str, String)],
) -> Result<Vec<ResourceType>, AppError> {
    let mut out = Vec::new();
    for (_, v) in q.iter().filter(|(k, _)| *k == REVINCLUDE) {
        let v = v.strip_suffix(":Patient").unwrap_or(v);
        let kind = d
            .revincludes
            .contains(&v)
            .then(|| v.split_once(':').map(|(t, _)| t))
            .flatten()
            .and_then(|t| ALL.iter().find(|d| d.kind.as_str() == t))
            .map(|d| d.kind)
            .ok_or_else(|| {
                invalid(
                    REVINCLUDE,
                    "must be one of the revincludes in the CapabilityStatement",
                )
            })?;
        if !out.contains(&kind) {
            out.push(kind);
        }
    }
    Ok(out)
}

/// The records `_revinclude` adds for the patients of a page, at most
/// [`REVINCLUDE_MAX`] (the flag says whether there were more). For each type and each
/// patient the decision point decides a **read** of that type on that patient — token
/// scope, role, relationship and confidentiality, exactly as `GET /fhir/<type>/{id}` of
/// any of its records would be — and a patient the caller could not read such records
/// of contributes none. The records are fetched in that read's view and each is audited
/// as a read of that record.
async fn revinclude_records(
    pipeline: &Pipeline,
    state: &AppState,
    patients: &[PatientId],
    kinds: &[ResourceType],
) -> Result<(Vec<(ResourceType, Value)>, bool), AppError> {
    use super::claim::Claims;
    use super::document_reference::DocumentReferences;
    use super::observation::Observations;
    if kinds.is_empty() || patients.is_empty() {
        return Ok((Vec::new(), false));
    }
    let user = pipeline.user.id;
    let ids = patients.to_vec();
    let now = state.clock.now();
    let facts = state
        .db
        .run(move |c| {
            ids.into_iter()
                .map(|p| crate::db::users::patient_facts(c, p, user, now))
                .collect::<Result<Vec<_>, AppError>>()
        })
        .await?;
    let facts: Vec<PatientFacts> = facts.into_iter().flatten().collect();
    let mut out = Vec::new();
    let mut truncated = false;
    for kind in kinds {
        let room = REVINCLUDE_MAX.saturating_sub(out.len());
        let (rows, more) = match kind {
            ResourceType::Observation => {
                revinclude_of::<Observations>(pipeline, state, &facts, room).await?
            }
            ResourceType::DocumentReference => {
                revinclude_of::<DocumentReferences>(pipeline, state, &facts, room).await?
            }
            ResourceType::Claim => revinclude_of::<Claims>(pipeline, state, &facts, room).await?,
            _ => (Vec::new(), false),
        };
        out.extend(rows);
        truncated |= more;
    }
    Ok((out, truncated))
}

/// [`revinclude_records`] of one type: at most `room` records (and whether there were
/// more), each permitted as a read of its patient and audited as one.
async fn revinclude_of<R: FhirResource>(
    pipeline: &Pipeline,
    state: &AppState,
    facts: &[PatientFacts],
    room: usize,
) -> Result<(Vec<(ResourceType, Value)>, bool), AppError> {
    let kind = R::DESCRIPTOR.kind;
    // The rows of a patient come through the type's search scope as well, so a record
    // is returned only when both a read of it and a search of its type are permitted.
    let Decision::Permit {
        search: Some(scope),
        ..
    } = pipeline.decide_on(kind, Search, Target::Search)?
    else {
        return Ok((Vec::new(), false));
    };
    let mut permitted = Vec::new();
    for f in facts {
        if let Decision::Permit { view, .. } =
            pipeline.decide_on(kind, Read, Target::Patient(*f))?
        {
            permitted.push((f.patient_id, R::fields(view, &Elements::all())?));
        }
    }
    let kr = state.keyring.clone();
    let limit = room as i64 + 1;
    let mut rows = state
        .db
        .run(move |c| {
            let mut out = Vec::new();
            for (p, fields) in permitted {
                if out.len() as i64 >= limit {
                    break;
                }
                let criteria = R::criteria(&[("patient", p.to_string())])?;
                let page = Page::first(limit - out.len() as i64);
                out.extend(R::search(c, &kr, &criteria, scope, page, fields)?);
            }
            Ok(out)
        })
        .await?;
    let more = rows.len() > room;
    rows.truncate(room);
    for r in &rows {
        let what = crate::audit::What::new(crate::audit::AuditAction::from(Read))
            .on(kind)
            .id(R::id(r));
        pipeline.recorder.permit(what, [R::subject(r)]).await?;
    }
    Ok((rows.iter().map(|r| (kind, R::to_fhir(r))).collect(), more))
}

/// Whether the search asks for `_include` of the matches' patients: every value must be
/// one the descriptor lists (a 422 otherwise, also for `*`).
fn wants_include(d: &Descriptor, q: &[(&'static str, String)]) -> Result<bool, AppError> {
    let mut any = false;
    for (_, v) in q.iter().filter(|(k, _)| *k == INCLUDE) {
        let v = v.strip_suffix(":Patient").unwrap_or(v);
        if !d.includes.contains(&v) {
            return Err(invalid(
                INCLUDE,
                "must be one of the includes in the CapabilityStatement",
            ));
        }
        any = true;
    }
    Ok(any)
}

/// The Patient resources `_include` adds for the patients of a page: each decided as a
/// read of that Patient by the one decision point (scope, role and relationship, exactly
/// as `GET /fhir/Patient/{id}` would be) and fetched in that read's view; a patient the
/// caller could not read directly is left out. They are the patients the search's audit
/// event names.
async fn include_patients(
    pipeline: &Pipeline,
    state: &AppState,
    patients: &[PatientId],
) -> Result<Vec<Value>, AppError> {
    use super::patient::Patients;
    let user = pipeline.user.id;
    let ids = patients.to_vec();
    let now = state.clock.now();
    let facts = state
        .db
        .run(move |c| {
            ids.into_iter()
                .map(|p| crate::db::users::patient_facts(c, p, user, now))
                .collect::<Result<Vec<_>, AppError>>()
        })
        .await?;
    let mut permitted = Vec::new();
    for f in facts.into_iter().flatten() {
        if let Decision::Permit { view, .. } =
            pipeline.decide_on(ResourceType::Patient, Read, Target::Patient(f))?
        {
            permitted.push((f.patient_id, Patients::fields(view, &Elements::all())?));
        }
    }
    let kr = state.keyring.clone();
    let found = state
        .db
        .run(move |c| {
            let mut out = Vec::new();
            for (p, fields) in permitted {
                if let Some(r) = Patients::get(c, &kr, RecordId(p.as_uuid()), fields)? {
                    out.push(Patients::to_fhir(&r));
                }
            }
            Ok(out)
        })
        .await?;
    Ok(found)
}

/// Refuses a write or search on a field outside the view: audited as a denial
/// (`field-not-in-view`), answered by [`refusal::on_field`]. Always an `Err`.
async fn refuse_field(
    pipeline: &Pipeline,
    id: Option<RecordId>,
    patients: impl IntoIterator<Item = PatientId>,
    field: &'static str,
    usage: FieldUse,
) -> Result<(), AppError> {
    let reason = crate::audit::DenyReason::FieldNotInView;
    pipeline
        .recorder
        .deny(pipeline.what(id)?, patients, reason)
        .await?;
    Err(refusal::on_field(field, usage))
}

/// Fills in what only the write knows: the new record's id and its patient.
fn created<R: FhirResource>(r: &R::Record, event: &mut AuditEvent) {
    event.resource_id = Some(R::id(r).into());
    event.patient_ids = vec![R::subject(r)];
}

/// A JSON body, judged only after the pipeline admitted the principal: actix polls a
/// handler's extractors together and answers with the first error, so a bad body (or
/// Content-Type) must not be able to answer before — or race — authentication (401), the
/// principal's refusals (403, 429) and the recording of its actor.
type Body<T> = Result<JsonBody<T>, AppError>;

/// The outcome of a conditional create's search (`If-None-Exist`).
enum Existing<R: FhirResource> {
    None,
    One(R::Record),
    Several,
}

/// `If-None-Exist: <search query>`: the caller's own search of this type (decided and
/// scoped like the search route, so only records the caller may see can match). One
/// match is read back (audited as a read of it); several are a 412.
///
/// The same search in the create's own query string (`POST /fhir/Patient?identifier=…`,
/// how `fhirpy` sends a conditional create) is the same condition: a query on a create
/// is never ignored, since ignoring it would silently make the duplicate the client
/// asked to avoid. Both at once is a 400.
async fn if_none_exist<R: FhirResource>(
    req: &HttpRequest,
    pipeline: &Pipeline,
    state: &AppState,
) -> Result<Existing<R>, AppError> {
    let in_url = params::parse_params(req.query_string(), &R::DESCRIPTOR.accepted(), false)?;
    let bad = || {
        invalid(
            "If-None-Exist",
            "must be a search query of this resource type",
        )
    };
    let q = match (req.headers().get("if-none-exist"), in_url.is_empty()) {
        // Nothing but `_format` (or nothing) in the URL, and no header: a plain create.
        (None, true) => return Ok(Existing::None),
        (None, false) => in_url,
        (Some(header), true) => {
            let query = header.to_str().map_err(|_| bad())?;
            let query = query.rsplit_once('?').map_or(query, |(_, q)| q);
            params::parse_params(query, &R::DESCRIPTOR.accepted(), false)?
        }
        (Some(_), false) => {
            return Err(AppError::bad_request(
                "A conditional create takes its search either in If-None-Exist or in the query string, not both.",
            ));
        }
    };
    if !q.iter().any(|(k, _)| !k.starts_with('_')) {
        return Err(bad());
    }
    let criteria = R::criteria(&q)?;
    // The caller's own search: a missing scope or role is refused as on the search route;
    // no relationship means nothing the caller may see can match.
    let (view, scope) = match pipeline.decide_as(Search, Target::Search)? {
        Decision::Permit {
            view,
            search: Some(scope),
            ..
        } => (view, scope),
        Decision::Permit { search: None, .. } => {
            return Err(AppError::internal("search permit without scope"));
        }
        Decision::Deny(crate::policy::DenyReason::NoRelationship) => return Ok(Existing::None),
        Decision::Deny(reason) => {
            let what = pipeline.what_as(Search, None)?;
            pipeline.recorder.deny(what, [], reason).await?;
            return Err(refusal::on_search(reason));
        }
    };
    let fields = R::fields(view, &Elements::all())?;
    if let Some(field) = R::searched_outside(&criteria, fields) {
        refuse_field(pipeline, None, [], field, FieldUse::Search).await?;
    }
    let kr = state.keyring.clone();
    let mut rows = state
        .db
        .run(move |c| R::search(c, &kr, &criteria, scope, Page::first(2), fields))
        .await?;
    match rows.len() {
        0 => Ok(Existing::None),
        1 => {
            let record = rows.pop().ok_or_else(|| AppError::internal("one row"))?;
            let what = pipeline.what_as(Read, Some(R::id(&record)))?;
            pipeline
                .recorder
                .permit(what, [R::subject(&record)])
                .await?;
            Ok(Existing::One(record))
        }
        _ => {
            let patients: Vec<PatientId> = rows.iter().map(R::subject).collect();
            let what = pipeline.what_as(Search, None)?;
            pipeline.recorder.permit(what, patients).await?;
            Ok(Existing::Several)
        }
    }
}

/// Create: validate, decide, write with its event; answers the principal's view (or
/// nothing with `Prefer: return=minimal`). With `If-None-Exist`, an existing match is
/// answered instead (200), several are a 412.
pub async fn create<R: FhirResource>(
    req: HttpRequest,
    pipeline: Pipeline,
    state: web::Data<AppState>,
    settings: web::Data<FhirSettings>,
    body: Body<R::Input>,
) -> Result<HttpResponse, AppError> {
    check_route::<R>(&pipeline)?;
    negotiate(&req)?;
    let minimal = Prefer::of(&req).minimal;
    let input = body?.0;
    if R::input_id(&input).is_some() {
        return Err(invalid("id", "must not be set on create"));
    }
    let mut new = R::validate(input, &pipeline.principal)?;
    match if_none_exist::<R>(&req, &pipeline, &state).await? {
        Existing::None => {}
        Existing::One(record) => {
            let mut res = respond::<R>(
                &settings,
                StatusCode::OK,
                &record,
                &Elements::all(),
                minimal,
            );
            if let Ok(url) = HeaderValue::from_str(&record_url::<R>(&settings, &record)) {
                res.headers_mut().insert(LOCATION, url);
            }
            return Ok(res);
        }
        Existing::Several => {
            return Err(AppError::client(
                StatusCode::PRECONDITION_FAILED,
                "If-None-Exist matched more than one resource: make the search more specific.",
            ));
        }
    }
    let view = R::authorize_create(&pipeline, &mut new).await?;
    let fields = R::fields(view, &Elements::all())?;
    if let Some(field) = R::written_outside(&new, fields) {
        // A Patient's subject is not known before the insert (nil): no patient to name.
        let subject = Some(R::new_subject(&new)).filter(|p| !p.as_uuid().is_nil());
        refuse_field(&pipeline, None, subject, field, FieldUse::Write).await?;
    }
    let kr = state.keyring.clone();
    let author = pipeline.user_id();
    let write = move |c: &mut PgConnection| {
        let record = R::insert(c, &kr, &new, author, fields)?;
        record_version::<R>(c, &kr, R::id(&record))?;
        Ok(record)
    };
    let complete: fn(&R::Record, &mut AuditEvent) = created::<R>;
    let record = pipeline
        .commit_with(None, [], write, Some(complete))
        .await?;
    Ok(respond::<R>(
        &settings,
        StatusCode::CREATED,
        &record,
        &Elements::all(),
        minimal,
    ))
}

/// Update: replace, version-checked when `If-Match` is sent (required only with
/// `fhir.require_if_match`), input checked before any record is looked up; answers the
/// full resource in the principal's view (or nothing with `Prefer: return=minimal`).
pub async fn update<R: FhirResource>(
    req: HttpRequest,
    pipeline: Pipeline,
    state: web::Data<AppState>,
    settings: web::Data<FhirSettings>,
    path: web::Path<String>,
    body: Body<R::Input>,
) -> Result<HttpResponse, AppError> {
    check_route::<R>(&pipeline)?;
    negotiate(&req)?;
    let minimal = Prefer::of(&req).minimal;
    let id = params::parse_id(&path)?;
    let expected = if_match(&req, settings.require_if_match)?;
    let input = body?.0;
    if R::input_id(&input) != Some(id.to_string().as_str()) {
        return Err(invalid("id", "must match the id in the URL"));
    }
    let mut new = R::validate(input, &pipeline.principal)?;
    let (view, facts) = pipeline.authorize_record(id, R::patient_of).await?;
    let patient = facts.patient_id;
    if let Err(e) = R::check_update(&mut new, &facts) {
        pipeline.error(Some(id), [patient]).await?;
        return Err(e);
    }
    let fields = R::fields(view, &Elements::all())?;
    write_update::<R>(
        &pipeline, &state, &settings, id, patient, expected, new, fields, minimal,
    )
    .await
}

/// PATCH: `PATCH /fhir/<type>/{id}` with a JSON Patch (`application/json-patch+json`),
/// decided as an update of the record. The patch applies to the resource as the caller
/// reads it (their view), and the result is an update like any other: validated whole,
/// refused (403) if it writes a field outside the view, fields outside the view kept as
/// stored, version-checked (against `If-Match` when sent, else against the version the
/// patch was applied to, so no concurrent change is lost), a new history version.
pub async fn patch<R: FhirResource>(
    req: HttpRequest,
    pipeline: Pipeline,
    state: web::Data<AppState>,
    settings: web::Data<FhirSettings>,
    path: web::Path<String>,
    body: Body<Vec<super::patch::Op>>,
) -> Result<HttpResponse, AppError> {
    check_route::<R>(&pipeline)?;
    negotiate(&req)?;
    let minimal = Prefer::of(&req).minimal;
    let id = params::parse_id(&path)?;
    let expected = if_match(&req, settings.require_if_match)?;
    let patch_type = req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json-patch+json"));
    if !patch_type {
        return Err(AppError::client(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "A PATCH needs a JSON Patch body (application/json-patch+json).",
        ));
    }
    let ops = body?.0;
    let (view, facts) = pipeline.authorize_record(id, R::patient_of).await?;
    let patient = facts.patient_id;
    let fields = R::fields(view, &Elements::all())?;
    let kr = state.keyring.clone();
    let Some(current) = state.db.run(move |c| R::get(c, &kr, id, fields)).await? else {
        pipeline.error(Some(id), [patient]).await?;
        return Err(AppError::not_found());
    };
    let version = R::version(&current);
    if expected.is_some_and(|e| e != version) {
        pipeline.error(Some(id), [patient]).await?;
        return Err(params::precondition_failed());
    }
    let patched = super::patch::apply(R::to_fhir(&current), &ops).and_then(|doc| {
        serde_json::from_value::<R::Input>(doc).map_err(|_| {
            AppError::unprocessable(
                "The patched resource is not a valid resource of this type: nothing was changed.",
            )
        })
    });
    let input = match patched {
        Ok(input) => input,
        Err(e) => {
            pipeline.error(Some(id), [patient]).await?;
            return Err(e);
        }
    };
    if R::input_id(&input) != Some(id.to_string().as_str()) {
        pipeline.error(Some(id), [patient]).await?;
        return Err(invalid("id", "must match the id in the URL"));
    }
    let new = match R::validate(input, &pipeline.principal)
        .and_then(|mut n| R::check_update(&mut n, &facts).map(|()| n))
    {
        Ok(new) => new,
        Err(e) => {
            pipeline.error(Some(id), [patient]).await?;
            return Err(e);
        }
    };
    write_update::<R>(
        &pipeline,
        &state,
        &settings,
        id,
        patient,
        Some(version),
        new,
        fields,
        minimal,
    )
    .await
}

/// The write of an update (PUT and PATCH alike): refused (403) if it writes a field
/// outside the view; otherwise stored version-checked against `expected` with a new
/// history version, audited, and answered in the caller's view (nothing with
/// `Prefer: return=minimal`).
#[allow(clippy::too_many_arguments)]
async fn write_update<R: FhirResource>(
    pipeline: &Pipeline,
    state: &AppState,
    settings: &FhirSettings,
    id: RecordId,
    patient: PatientId,
    expected: Option<i32>,
    new: R::New,
    fields: R::Fields,
    minimal: bool,
) -> Result<HttpResponse, AppError> {
    if let Some(field) = R::written_outside(&new, fields) {
        refuse_field(pipeline, Some(id), [patient], field, FieldUse::Write).await?;
    }
    let kr = state.keyring.clone();
    let write = move |c: &mut PgConnection| {
        let record = R::update(c, &kr, id, expected, &new, fields)?;
        if let Some(r) = &record {
            record_version::<R>(c, &kr, R::id(r))?;
        }
        Ok(record)
    };
    let record = pipeline
        .audited(id, patient, write, R::update_missed)
        .await?;
    Ok(respond::<R>(
        settings,
        StatusCode::OK,
        &record,
        &Elements::all(),
        minimal,
    ))
}

/// `Patient/$everything` (`GET /fhir/Patient/{id}/$everything?_count=`): every resource the caller may see for one patient: the Patient (decided as a read of
/// it, 404 without a relationship), then its Observations, DocumentReferences and Claims,
/// each type decided as a search of that type by the one decision point (a type the
/// caller may not search is left out) and scoped like one. Paged across the types with a
/// sealed cursor; audited as one access per resource type on each page.
pub async fn everything(
    req: HttpRequest,
    pipeline: Pipeline,
    state: web::Data<AppState>,
    settings: web::Data<FhirSettings>,
    path: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    use super::claim::Claims;
    use super::document_reference::DocumentReferences;
    use super::observation::Observations;
    use super::patient::Patients;
    check_route::<Patients>(&pipeline)?;
    negotiate(&req)?;
    let id = params::parse_id(&path)?;
    let q = params::search_params(&req, &["_count", CURSOR])?;
    let count = bundle::page_size(params::single(&q, "_count")?)?;
    let user = pipeline.user.id;
    // Where the previous page stopped: the type (0 = Patient, then the record types in
    // order) and the last id of it.
    let start = match params::single(&q, CURSOR)? {
        None => None,
        Some(c) => {
            let (after, carried) = Cursor::open(&state.keyring, user, ResourceType::Patient, c)?;
            let part = carried
                .and_then(|p| p.strip_prefix(&format!("{id}:"))?.parse::<usize>().ok())
                .filter(|p| (1..=3).contains(p))
                .ok_or_else(|| invalid(CURSOR, "is not a cursor this server issued to you"))?;
            Some((part, after))
        }
    };
    let (view, facts) = pipeline.authorize_record(id, Patients::patient_of).await?;
    let patient = facts.patient_id;
    let mut entries: Vec<(ResourceType, Value)> = Vec::new();
    if start.is_none() {
        let fields = Patients::fields(view, &Elements::all())?;
        let kr = state.keyring.clone();
        let Some(p) = state
            .db
            .run(move |c| Patients::get(c, &kr, id, fields))
            .await?
        else {
            pipeline.error(Some(id), [patient]).await?;
            return Err(AppError::not_found());
        };
        pipeline.permit(Some(id), [patient]).await?;
        entries.push((ResourceType::Patient, Patients::to_fhir(&p)));
    }
    let (first, mut after) = match start {
        Some((part, last)) => (part, Some(last)),
        None => (1, None),
    };
    let mut next = None;
    for part in first..=3 {
        let room = count.saturating_sub(entries.len());
        let (rows, more) = match part {
            1 => part_of::<Observations>(&pipeline, &state, patient, after, room).await?,
            2 => part_of::<DocumentReferences>(&pipeline, &state, patient, after, room).await?,
            _ => part_of::<Claims>(&pipeline, &state, patient, after, room).await?,
        };
        after = None;
        let last = rows
            .last()
            .and_then(|(_, r)| r["id"].as_str().and_then(|i| Uuid::parse_str(i).ok()));
        entries.extend(rows);
        if more {
            next = Some((part, last.unwrap_or(Uuid::nil())));
            break;
        }
    }
    let next = next
        .map(|(part, last)| {
            let carried = format!("{id}:{part}");
            Cursor::seal(
                &state.keyring,
                user,
                ResourceType::Patient,
                last,
                Some(&carried),
            )
        })
        .transpose()?;
    let url = format!("{}/Patient/{id}/$everything", settings.base);
    let mut links = vec![serde_json::json!({ "relation": "self", "url": url })];
    if let Some(c) = next {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        q.append_pair("_count", &count.to_string());
        q.append_pair(CURSOR, &c);
        links.push(
            serde_json::json!({ "relation": "next", "url": format!("{url}?{}", q.finish()) }),
        );
    }
    let entries: Vec<Value> = entries
        .into_iter()
        .map(|(kind, r)| {
            let rid = r["id"].as_str().unwrap_or_default().to_string();
            serde_json::json!({
                "fullUrl": format!("{}/{}/{rid}", settings.base, kind.as_str()),
                "resource": r,
                "search": { "mode": "match" },
            })
        })
        .collect();
    let mut body =
        serde_json::json!({ "resourceType": "Bundle", "type": "searchset", "link": links });
    if !entries.is_empty() {
        body["entry"] = Value::Array(entries);
    }
    Ok(HttpResponse::Ok()
        .content_type(FHIR_JSON)
        .body(body.to_string()))
}

/// One type's part of `$everything`: up to `room` records of `patient` (after `after`)
/// if the caller may search the type, each page's part audited as a search of the type
/// naming the patient; and whether there are more.
async fn part_of<R: FhirResource>(
    pipeline: &Pipeline,
    state: &AppState,
    patient: PatientId,
    after: Option<Uuid>,
    room: usize,
) -> Result<(Vec<(ResourceType, Value)>, bool), AppError> {
    let kind = R::DESCRIPTOR.kind;
    let Decision::Permit {
        view,
        search: Some(scope),
        ..
    } = pipeline.decide_on(kind, Search, Target::Search)?
    else {
        return Ok((Vec::new(), false));
    };
    let criteria = R::criteria(&[("patient", patient.to_string())])?;
    let fields = R::fields(view, &Elements::all())?;
    let kr = state.keyring.clone();
    let limit = room as i64 + 1;
    let page = Page {
        sort: None,
        after: after.map(|id| Position {
            id,
            at: None,
            then_at: None,
        }),
        limit,
    };
    let mut rows = state
        .db
        .run(move |c| R::search(c, &kr, &criteria, scope, page, fields))
        .await?;
    let more = rows.len() > room;
    rows.truncate(room);
    if !rows.is_empty() {
        let what = crate::audit::What::new(crate::audit::AuditAction::from(Search)).on(kind);
        pipeline.recorder.permit(what, [patient]).await?;
    }
    Ok((rows.iter().map(|r| (kind, R::to_fhir(r))).collect(), more))
}

/// Delete: a soft delete committed with its event.
pub async fn delete<R: FhirResource>(
    pipeline: Pipeline,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    check_route::<R>(&pipeline)?;
    let id = params::parse_id(&path)?;
    let (_, facts) = pipeline.authorize_record(id, R::patient_of).await?;
    let kr = state.keyring.clone();
    let write = move |c: &mut PgConnection| {
        // The deletion is a version of its own (without a body) in the history.
        let Some(before) = R::get(c, &kr, id, R::full_fields())? else {
            return Ok(None);
        };
        if !R::delete(c, id)? {
            return Ok(None);
        }
        let kind = R::DESCRIPTOR.kind.as_str();
        let version = R::version(&before) + 1;
        history::record(c, &kr, kind, id.into(), version, R::subject(&before), None)?;
        Ok(Some(()))
    };
    pipeline
        .audited(id, facts.patient_id, write, AppError::not_found)
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_resource_type_is_described_once() {
        for kind in ResourceType::ALL {
            assert_eq!(of(kind).kind, kind);
            assert_eq!(ALL.iter().filter(|d| d.kind == kind).count(), 1);
            assert_eq!(of(kind).path, format!("/fhir/{}", kind.as_str()));
            assert_eq!(
                of(kind).item_path,
                format!("/fhir/{}/{{id}}", kind.as_str())
            );
        }
    }
}
