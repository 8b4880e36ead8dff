//! Walks EVERY route of the route table (`custodian::app::routes::table()`) and checks
//! the access answer the DESIGN documents for it:
//!
//! | route kind                | no credentials            | credentials lacking the route's scope | each role without a relationship to the patient |
//! |---------------------------|---------------------------|---------------------------------------|--------------------------------------------------|
//! | `/fhir/…` (FHIR action)   | 401                       | 403                                   | record: 404 · search: 403, or 200 with no rows · create: 422 · a role the matrix refuses: 403 |
//! | `/fhir/Patient/…/$break-glass…` (BreakGlass) | 401     | 403                                   | – (`api/break_glass.rs`)                         |
//! | `/fhir/AuditEvent…` (AuditTrail) | 401                | 403 (privacy officer, no `audit.read`) | each role with `audit.read`: reviewers 200, the others 403 |
//! | `/fhir/…$export…` (Export) | 401                      | 403 (no search scope at all)          | each role: without an export grant 403; with one: kick-off and download 401 (step-up: no recent MFA), status and cancel 404 |
//! | `/api/admin/…` (Admin)    | 401                       | 403 (admin role, no `admin` scope)    | –                                                |
//! | `/console/…` page (GET)   | 303 to `/console/signin`  | –                                     | –                                                |
//! | `/console/…` action (POST)| 403                       | –                                     | –                                                |
//! | console sign-in steps     | the step's own answer (below), never a console page | –           | –                                                |
//! | Public                    | 200                       | –                                     | –                                                |
//!
//! The expected answer of "each role without a relationship" is derived from
//! `policy::decide` (whose matrix has its own exhaustive test) and `access::refusal`'s
//! documented mapping, so this test checks that every route's handler really goes
//! through the pipeline on the route's own action.
//!
//! Every route must be listed in [`EXPECTED`]: adding a route to the table without
//! deciding here what it must answer fails [`every_route_in_the_table_is_covered`].

use crate::api::attribution::{events_after, last_seq};
use crate::api::resources::{claim_json, note_json, observation_json};
use crate::support::TestApp;
use crate::support::world::{World, patient_json};
use custodian::app::routes::{RouteInfo, table};
use custodian::db::users;
use custodian::policy::{
    self, Action, Decision, DenyReason, Interaction, PatientFacts, ResourceType, Role, Target,
};
use reqwest::{Method, StatusCode};

/// The route's method as the HTTP client spells it.
fn method(route: &RouteInfo) -> Method {
    Method::from_bytes(route.method.as_str().as_bytes()).unwrap()
}
use custodian::domain::{FacilityId, PatientId, UserId};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use uuid::Uuid;

/// What a route must answer to a request without credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// The FHIR API: the pipeline on the route's action.
    Fhir,
    /// A break-glass operation on the FHIR API (`api/break_glass.rs` tests its answers).
    BreakGlass,
    /// The audit trail as FHIR `AuditEvent` resources (`api/audit_event.rs`).
    AuditTrail,
    /// Bulk Data `$export` (`api/export.rs` tests the flow).
    Export,
    /// The administration API.
    Admin,
    /// A console page: redirect to the sign-in page.
    ConsolePage,
    /// A console form post (an action): refused with 403, nothing done.
    ConsoleAction,
    /// A console sign-in step without a session: this status.
    SignIn(u16),
    /// No authentication: success.
    Public,
}

/// Every route of the product and what it must answer (HEAD routes follow their GET).
const EXPECTED: &[(&str, &str, Expect)] = &[
    ("GET", "/healthz", Expect::Public),
    ("GET", "/readyz", Expect::Public),
    ("GET", "/fhir/metadata", Expect::Public),
    (
        "GET",
        "/fhir/.well-known/smart-configuration",
        Expect::Public,
    ),
    ("GET", "/.well-known/smart-configuration", Expect::Public),
    ("GET", "/fhir/$export", Expect::Export),
    ("GET", "/fhir/Group/{id}/$export", Expect::Export),
    ("GET", "/fhir/Patient/$export", Expect::Export),
    ("GET", "/fhir/$export-status/{id}", Expect::Export),
    ("DELETE", "/fhir/$export-status/{id}", Expect::Export),
    ("GET", "/fhir/$export-file/{file}", Expect::Export),
    ("GET", "/fhir/Patient", Expect::Fhir),
    ("POST", "/fhir/Patient/_search", Expect::Fhir),
    ("POST", "/fhir/Patient", Expect::Fhir),
    ("GET", "/fhir/Patient/{id}", Expect::Fhir),
    (
        "POST",
        "/fhir/Patient/{id}/$break-glass",
        Expect::BreakGlass,
    ),
    ("GET", "/fhir/Patient/{id}/$break-glass", Expect::BreakGlass),
    (
        "GET",
        "/fhir/Patient/$break-glass-lookup",
        Expect::BreakGlass,
    ),
    (
        "POST",
        "/fhir/Patient/{id}/$break-glass-end",
        Expect::BreakGlass,
    ),
    (
        "PUT",
        "/api/admin/patients/{id}/confidentiality",
        Expect::Admin,
    ),
    ("POST", "/api/admin/break-glass/{id}/revoke", Expect::Admin),
    (
        "GET",
        "/api/admin/patients/{id}/confidentiality",
        Expect::Admin,
    ),
    ("GET", "/fhir/Patient/{id}/_history", Expect::Fhir),
    ("GET", "/fhir/Patient/{id}/$everything", Expect::Fhir),
    ("GET", "/fhir/Patient/{id}/_history/{vid}", Expect::Fhir),
    ("GET", "/fhir/Patient/{id}/$access-report", Expect::Fhir),
    ("GET", "/fhir/AuditEvent", Expect::AuditTrail),
    ("GET", "/fhir/AuditEvent/{id}", Expect::AuditTrail),
    ("PUT", "/fhir/Patient/{id}", Expect::Fhir),
    ("PATCH", "/fhir/Patient/{id}", Expect::Fhir),
    ("GET", "/fhir/Observation", Expect::Fhir),
    ("POST", "/fhir/Observation/_search", Expect::Fhir),
    ("POST", "/fhir/Observation", Expect::Fhir),
    ("GET", "/fhir/Observation/{id}", Expect::Fhir),
    ("GET", "/fhir/Observation/{id}/_history", Expect::Fhir),
    ("GET", "/fhir/Observation/{id}/_history/{vid}", Expect::Fhir),
    ("PUT", "/fhir/Observation/{id}", Expect::Fhir),
    ("PATCH", "/fhir/Observation/{id}", Expect::Fhir),
    ("DELETE", "/fhir/Observation/{id}", Expect::Fhir),
    ("GET", "/fhir/DocumentReference", Expect::Fhir),
    ("POST", "/fhir/DocumentReference/_search", Expect::Fhir),
    ("POST", "/fhir/DocumentReference", Expect::Fhir),
    ("GET", "/fhir/DocumentReference/{id}", Expect::Fhir),
    ("GET", "/fhir/DocumentReference/{id}/_history", Expect::Fhir),
    (
        "GET",
        "/fhir/DocumentReference/{id}/_history/{vid}",
        Expect::Fhir,
    ),
    ("PUT", "/fhir/DocumentReference/{id}", Expect::Fhir),
    ("PATCH", "/fhir/DocumentReference/{id}", Expect::Fhir),
    ("GET", "/fhir/Claim", Expect::Fhir),
    ("POST", "/fhir/Claim/_search", Expect::Fhir),
    ("POST", "/fhir/Claim", Expect::Fhir),
    ("GET", "/fhir/Claim/{id}", Expect::Fhir),
    ("GET", "/fhir/Claim/{id}/_history", Expect::Fhir),
    ("GET", "/fhir/Claim/{id}/_history/{vid}", Expect::Fhir),
    ("PUT", "/fhir/Claim/{id}", Expect::Fhir),
    ("PATCH", "/fhir/Claim/{id}", Expect::Fhir),
    ("DELETE", "/fhir/Claim/{id}", Expect::Fhir),
    ("GET", "/api/admin/users", Expect::Admin),
    ("GET", "/api/admin/users/{id}", Expect::Admin),
    ("POST", "/api/admin/users/{id}/roles", Expect::Admin),
    (
        "DELETE",
        "/api/admin/users/{id}/roles/{role}",
        Expect::Admin,
    ),
    ("POST", "/api/admin/users/{id}/disable", Expect::Admin),
    ("POST", "/api/admin/users/{id}/enable", Expect::Admin),
    ("PUT", "/api/admin/users/{id}/facility", Expect::Admin),
    ("PUT", "/api/admin/users/{id}/family-name", Expect::Admin),
    ("POST", "/api/admin/care-teams", Expect::Admin),
    ("DELETE", "/api/admin/care-teams", Expect::Admin),
    ("GET", "/api/admin/facilities", Expect::Admin),
    ("POST", "/api/admin/facilities", Expect::Admin),
    ("POST", "/api/admin/clients", Expect::Admin),
    ("GET", "/", Expect::Public),
    // The sign-in page itself.
    ("GET", "/console/signin", Expect::SignIn(200)),
    // Starts the OpenID Connect login. This test's provider serves keys only, no
    // discovery document, so the login cannot start: 503, the provider is unavailable
    // (console_login.rs covers the redirect with a full OpenID provider).
    ("GET", "/console/login", Expect::SignIn(503)),
    // A callback without a login in progress.
    ("GET", "/console/callback", Expect::SignIn(400)),
    // The TOTP step without a half-signed-in session: back to the sign-in page.
    ("GET", "/console/totp", Expect::SignIn(303)),
    // A TOTP code posted without a half-signed-in session.
    ("POST", "/console/totp", Expect::SignIn(403)),
    // The emergency sign-in form, and a submission without valid credentials.
    ("GET", "/console/emergency", Expect::SignIn(200)),
    ("POST", "/console/emergency", Expect::SignIn(401)),
    ("GET", "/console", Expect::ConsolePage),
    ("POST", "/console/logout", Expect::ConsoleAction),
    ("GET", "/console/users", Expect::ConsolePage),
    ("GET", "/console/users/{id}", Expect::ConsolePage),
    (
        "POST",
        "/console/users/{id}/{action}",
        Expect::ConsoleAction,
    ),
    ("GET", "/console/clients", Expect::ConsolePage),
    ("POST", "/console/clients", Expect::ConsoleAction),
    (
        "POST",
        "/console/clients/{id}/disable",
        Expect::ConsoleAction,
    ),
    ("POST", "/api/admin/webhooks", Expect::Admin),
    (
        "POST",
        "/api/admin/webhooks/deliveries/{id}/redeliver",
        Expect::Admin,
    ),
    ("POST", "/api/admin/webhooks/{id}/{action}", Expect::Admin),
    ("GET", "/console/webhooks", Expect::ConsolePage),
    ("GET", "/console/exports", Expect::ConsolePage),
    ("POST", "/console/webhooks", Expect::ConsoleAction),
    (
        "POST",
        "/console/webhooks/deliveries/{id}/redeliver",
        Expect::ConsoleAction,
    ),
    (
        "POST",
        "/console/webhooks/{id}/{action}",
        Expect::ConsoleAction,
    ),
    ("GET", "/console/audit", Expect::ConsolePage),
    ("POST", "/console/audit", Expect::ConsoleAction),
    ("POST", "/console/audit/export", Expect::ConsoleAction),
    ("POST", "/console/audit/verify", Expect::ConsoleAction),
    ("GET", "/console/audit/charts", Expect::ConsolePage),
    ("GET", "/console/audit/{seq}", Expect::ConsolePage),
    ("GET", "/console/patients/{id}/access", Expect::ConsolePage),
    ("GET", "/console/people/{id}/activity", Expect::ConsolePage),
    (
        "GET",
        "/console/patients/{id}/access.csv",
        Expect::ConsolePage,
    ),
    ("GET", "/console/approvals", Expect::ConsolePage),
    (
        "POST",
        "/console/approvals/{id}/{decision}",
        Expect::ConsoleAction,
    ),
    ("GET", "/console/alerts", Expect::ConsolePage),
    ("GET", "/console/alerts/{id}", Expect::ConsolePage),
    ("GET", "/console/reidentify", Expect::ConsolePage),
    ("POST", "/console/reidentify", Expect::ConsoleAction),
    ("GET", "/console/cases", Expect::ConsolePage),
    ("POST", "/console/cases", Expect::ConsoleAction),
    ("GET", "/console/cases/{id}", Expect::ConsolePage),
    ("POST", "/console/cases/{id}/{op}", Expect::ConsoleAction),
    ("GET", "/console/suppressions", Expect::ConsolePage),
    ("POST", "/console/suppressions", Expect::ConsoleAction),
    (
        "POST",
        "/console/suppressions/{id}/revoke",
        Expect::ConsoleAction,
    ),
    ("GET", "/console/break-glass", Expect::ConsolePage),
    ("GET", "/console/break-glass/{id}", Expect::ConsolePage),
    (
        "POST",
        "/console/break-glass/{id}/revoke",
        Expect::ConsoleAction,
    ),
    (
        "POST",
        "/console/break-glass/{id}/review",
        Expect::ConsoleAction,
    ),
    ("POST", "/console/step-up", Expect::ConsoleAction),
    ("POST", "/console/step-up/cancel", Expect::ConsoleAction),
    ("GET", "/static/{file}", Expect::Public),
];

fn expected(route: &RouteInfo) -> Option<Expect> {
    let method = if method(route) == Method::HEAD {
        "GET"
    } else {
        route.method.as_str()
    };
    EXPECTED
        .iter()
        .find(|(m, p, _)| *m == method && *p == route.path)
        .map(|(_, _, e)| *e)
}

#[test]
fn every_route_in_the_table_is_covered() {
    let routes = table();
    for route in &routes {
        let Some(expect) = expected(route) else {
            panic!(
                "{} {} is not covered by tests/it/routes.rs: add it to EXPECTED",
                route.method, route.path
            );
        };
        // The action the table declares must fit the expectation.
        let fits = match (expect, route.action) {
            (Expect::Fhir, Action::Fhir(..)) => route.path.starts_with("/fhir/"),
            (Expect::BreakGlass, Action::BreakGlass(_)) => {
                route.path.starts_with("/fhir/Patient/") && route.path.contains("$break-glass")
            }
            (Expect::AuditTrail, Action::AuditTrail(_)) => {
                route.path.starts_with("/fhir/AuditEvent")
            }
            (Expect::Export, Action::Export(_)) => {
                route.path.starts_with("/fhir/") && route.path.contains("$export")
            }
            (Expect::Admin, Action::Admin(_)) => route.path.starts_with("/api/"),
            (Expect::ConsolePage, Action::Console) => route.path.starts_with("/console"),
            (Expect::ConsoleAction, Action::Console) => {
                route.path.starts_with("/console/") && route.method.as_str() == "POST"
            }
            (Expect::SignIn(_), Action::ConsoleSignIn) => route.path.starts_with("/console/"),
            (Expect::Public, Action::Public) => true,
            _ => false,
        };
        assert!(fits, "{} {}: {:?}", route.method, route.path, route.action);
        // Public under /fhir: the CapabilityStatement and the SMART discovery document
        // (neither carries PHI); every other /fhir route is a FHIR or break-glass action.
        let public_fhir = ["/fhir/metadata", "/fhir/.well-known/smart-configuration"];
        if route.path.starts_with("/fhir/") && !public_fhir.contains(&route.path) {
            assert!(matches!(
                route.action,
                Action::Fhir(..)
                    | Action::BreakGlass(_)
                    | Action::AuditTrail(_)
                    | Action::Export(_)
            ));
        }
        if route.path.starts_with("/api/") {
            assert!(matches!(route.action, Action::Admin(_)));
        }
    }
    // And nothing listed here is missing from the table.
    let listed: BTreeSet<(String, String)> = routes
        .iter()
        .map(|r| (r.method.to_string(), r.path.to_string()))
        .collect();
    for (m, p, _) in EXPECTED {
        assert!(
            listed.contains(&(m.to_string(), p.to_string())),
            "{m} {p} is listed but not routed"
        );
    }
}

/// The records every FHIR route is tried on, all of one patient.
struct Records {
    patient: Uuid,
    observation: Uuid,
    document: Uuid,
    claim: Uuid,
    /// A user id, for the admin routes.
    user: Uuid,
    /// An audit event id, for the AuditEvent read.
    event: Uuid,
}

struct Setup {
    w: World,
    records: Records,
}

async fn setup() -> Setup {
    let w = World::with(|b, issuer| {
        b.set("server.body_limit_bytes", BODY_LIMIT as i64)
            .set("console.issuer", issuer)
            .set("console.client_id", "custodian-console")
            .set("console.client_secret", "test-secret")
            .set(
                "console.redirect_url",
                "https://localhost:8443/console/callback",
            )
    })
    .await;
    // The author: clinician and billing in the facility, on the patient's care team.
    let (author_id, _) = w.user("author", &[Role::Clinician, Role::Billing]);
    let token = w.token("author", ALL);
    let patient = w
        .create(&token, &patient_json("MRN-7001", "Routeson"))
        .await;
    let make = |path: &'static str, body: Value| {
        let w = &w;
        let token = token.clone();
        async move {
            let res = w.send(Method::POST, path, &token, Some(&body)).await;
            assert_eq!(res.status(), StatusCode::CREATED, "{path}");
            let v: Value = res.json().await.unwrap();
            Uuid::parse_str(v["id"].as_str().unwrap()).unwrap()
        }
    };
    let observation = make("/fhir/Observation", observation_json(patient)).await;
    let document = make("/fhir/DocumentReference", note_json(patient, "Seen.")).await;
    let claim = make("/fhir/Claim", claim_json(patient)).await;
    let event = {
        use custodian::db::schema::audit_events::dsl::*;
        use diesel::prelude::*;
        audit_events
            .order(seq.desc())
            .select(event_id)
            .first::<Uuid>(&mut w.app.db.conn())
            .unwrap()
    };
    Setup {
        w,
        records: Records {
            patient,
            observation,
            document,
            claim,
            user: author_id.as_uuid(),
            event,
        },
    }
}

const ALL: &str =
    "user/Patient.cruds user/Observation.cruds user/DocumentReference.cruds user/Claim.cruds";

/// The walk's body limit: far above every valid body, low enough to declare more cheaply.
const BODY_LIMIT: usize = 16 * 1024;

/// Every resource scope in the user and the patient context, so that only roles and
/// relationships decide for the strangers.
const STRANGER_SCOPES: &str = "user/Patient.cruds user/Observation.cruds \
user/DocumentReference.cruds user/Claim.cruds patient/Patient.cruds patient/Observation.cruds \
patient/DocumentReference.cruds patient/Claim.cruds";

fn letter(i: Interaction) -> char {
    match i {
        Interaction::Create => 'c',
        Interaction::Read => 'r',
        Interaction::Update => 'u',
        Interaction::Delete => 'd',
        Interaction::Search => 's',
    }
}

/// Every SMART scope except the route's own interaction on its own resource type.
fn scopes_without(resource: ResourceType, interaction: Interaction) -> String {
    ResourceType::ALL
        .iter()
        .map(|r| {
            let letters: String = if *r == resource {
                "cruds"
                    .chars()
                    .filter(|c| *c != letter(interaction))
                    .collect()
            } else {
                "cruds".to_string()
            };
            format!("user/{}.{letters}", r.as_str())
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl Setup {
    /// The concrete path of a route: its `{id}` is the record of the route's resource type.
    fn path(&self, route: &RouteInfo) -> String {
        let r = &self.records;
        let id = match route.action {
            Action::Fhir(ResourceType::Patient, _) => r.patient,
            Action::Fhir(ResourceType::Observation, _) => r.observation,
            Action::Fhir(ResourceType::DocumentReference, _) => r.document,
            Action::Fhir(ResourceType::Claim, _) => r.claim,
            Action::AuditTrail(_) => r.event,
            _ => r.user,
        };
        route
            .path
            .replace("{id}", &id.to_string())
            .replace("{seq}", "1")
            .replace("{role}", "billing")
            .replace("{action}", "disable")
            .replace("{decision}", "approve")
            .replace("{op}", "status")
            .replace("{vid}", "1")
            .replace("{file}", "console.css")
    }

    /// A valid body for a FHIR create or update (so that only access decides).
    fn body(&self, route: &RouteInfo) -> Option<Value> {
        let p = self.records.patient;
        let (resource, interaction) = match route.action {
            Action::Fhir(r, i @ (Interaction::Create | Interaction::Update)) => (r, i),
            Action::Admin(_) if method(route) != Method::GET && method(route) != Method::HEAD => {
                return Some(json!({}));
            }
            _ => return None,
        };
        let mut body = match resource {
            ResourceType::Patient => {
                let mut p = patient_json("MRN-7001", "Routeson");
                p["managingOrganization"] =
                    json!({ "reference": format!("Organization/{}", self.w.facility) });
                p
            }
            ResourceType::Observation => observation_json(p),
            ResourceType::DocumentReference => note_json(p, "Seen again."),
            ResourceType::Claim => claim_json(p),
        };
        if interaction == Interaction::Update {
            let id = match resource {
                ResourceType::Patient => self.records.patient,
                ResourceType::Observation => self.records.observation,
                ResourceType::DocumentReference => self.records.document,
                ResourceType::Claim => self.records.claim,
            };
            body["id"] = json!(id.to_string());
        }
        Some(body)
    }

    /// Sends `route` as [`Setup::send`] does and checks the audit obligation of an
    /// audited route: exactly one new event, naming `actor` (`None`: nobody).
    async fn send_audited(
        &self,
        route: &RouteInfo,
        token: Option<&str>,
        actor: Option<Uuid>,
        case: &str,
    ) -> reqwest::Response {
        let before = last_seq(&self.w.app);
        let res = self.send(route, token).await;
        if matches!(
            route.action,
            Action::Fhir(..)
                | Action::Admin(_)
                | Action::BreakGlass(_)
                | Action::AuditTrail(_)
                | Action::Export(_)
        ) {
            let events = events_after(&self.w.app, before);
            assert_eq!(
                events.len(),
                1,
                "{case}: exactly one audit event: {events:?}"
            );
            assert_eq!(events[0].actor, actor, "{case}: the actor: {events:?}");
        }
        res
    }

    async fn send(&self, route: &RouteInfo, token: Option<&str>) -> reqwest::Response {
        self.request(route, token).send().await.unwrap()
    }

    /// The request [`Setup::send`] sends.
    fn request(&self, route: &RouteInfo, token: Option<&str>) -> reqwest::RequestBuilder {
        let mut req = self
            .w
            .app
            .client
            .request(method(route), self.w.app.url(&self.path(route)));
        if let Some(token) = token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let console_post = route.path.starts_with("/console") && method(route) == Method::POST;
        if console_post {
            // An empty form, from our own origin: only the session decides.
            req = req
                .header("content-type", "application/x-www-form-urlencoded")
                .header("origin", self.w.app.url("").trim_end_matches('/'))
                .body("");
        }
        if method(route) == Method::PATCH {
            // A valid JSON Patch (so that only access decides).
            req = req
                .header("content-type", "application/json-patch+json")
                .header("if-match", "W/\"1\"")
                .body(r#"[{"op": "test", "path": "/id", "value": "x"}]"#);
        } else if let Some(body) = self.body(route) {
            req = req
                .header("content-type", "application/fhir+json")
                .header("if-match", "W/\"1\"")
                .body(body.to_string());
        }
        if let Action::Fhir(_, Interaction::Search) = route.action
            && method(route) == Method::POST
        {
            // A search by POST: its parameters in a form body (none: every row in scope).
            req = req
                .header("content-type", "application/x-www-form-urlencoded")
                .body("");
        }
        if let Action::Fhir(resource, Interaction::Create) = route.action {
            // A conditional create searches first: the walk checks that this search is
            // decided like the type's search route (without a relationship nothing
            // matches, so the create is decided as usual).
            let condition = match resource {
                ResourceType::Patient => "family=Routeson".to_string(),
                _ => format!("patient={}", self.records.patient),
            };
            req = req.header("if-none-exist", condition);
        }
        req
    }
}

fn audit_event_count(app: &TestApp) -> i64 {
    use custodian::db::schema::audit_events::dsl::*;
    use diesel::prelude::*;
    audit_events.count().get_result(&mut app.db.conn()).unwrap()
}

fn name(route: &RouteInfo) -> String {
    format!("{} {}", route.method, route.path)
}

/// The documented answer to `role` (no facility, no care team, no own record) on a FHIR
/// route: the decision point's answer mapped as `access::refusal` documents.
fn no_relationship_answer(
    role: Role,
    resource: ResourceType,
    interaction: Interaction,
    facility: Uuid,
    patient: Uuid,
) -> Result<u16, ()> {
    // The scopes the strangers' tokens carry, read in the role's SMART context.
    let scopes = custodian::auth::ScopeSet::parse(STRANGER_SCOPES);
    let context = policy::smart_context(false, &[role]);
    let allows = move |r: ResourceType, i: Interaction| scopes.allows(context, r, i);
    let subject = policy::Subject {
        user_id: UserId::new(),
        roles: &[role],
        scope_allows: &allows,
        facility_id: None,
        own_patient_id: None,
        now: chrono::Utc::now(),
    };
    let facts = PatientFacts::normal(
        if resource == ResourceType::Patient && interaction == Interaction::Create {
            PatientId(Uuid::nil())
        } else {
            PatientId(patient)
        },
        FacilityId(facility),
        false,
    );
    let target = match interaction {
        Interaction::Search => Target::Search,
        _ => Target::Patient(facts),
    };
    match (
        policy::decide(&subject, resource, interaction, target),
        interaction,
    ) {
        // A permitted search runs, restricted to the (empty) scope: checked by the caller.
        (Decision::Permit { .. }, Interaction::Search) => Err(()),
        (Decision::Permit { .. }, _) => {
            panic!("{role:?} may {interaction:?} {resource:?} without a relationship")
        }
        (Decision::Deny(DenyReason::NoRelationship), Interaction::Search) => Ok(403),
        (Decision::Deny(DenyReason::NoRelationship), Interaction::Create) => Ok(422),
        (Decision::Deny(DenyReason::NoRelationship), _) => Ok(404),
        (Decision::Deny(_), _) => Ok(403),
    }
}

#[tokio::test]
async fn every_route_answers_as_documented_without_credentials_without_scope_and_without_a_relationship()
 {
    let s = setup().await;
    let w = &s.w;
    let routes = table();

    // A user per role, in no facility, on no care team, linked to no patient record.
    let mut strangers = Vec::new();
    for role in Role::ALL {
        let sub = format!("stranger-{}", role.as_str());
        let mut c = w.app.db.conn();
        let u = users::user_for(&mut c, &w.idp.issuer(), &sub, users::UserKind::Person).unwrap();
        users::grant_role(&mut c, u.id, role, "test setup", None).unwrap();
        strangers.push((role, w.token(&sub, STRANGER_SCOPES), u.id.as_uuid()));
    }
    // An admin whose token lacks the `admin` scope.
    let (admin_no_scope_id, _) = w.user("admin-no-scope", &[Role::Admin]);
    let admin_no_scope = w.token("admin-no-scope", ALL);
    // A privacy officer whose token lacks `audit.read`.
    let (po_no_scope_id, _) = w.user("po-no-scope", &[Role::PrivacyOfficer]);
    let po_no_scope = w.token("po-no-scope", &format!("{STRANGER_SCOPES} admin"));
    // The strangers again, with `audit.read`.
    let readers: Vec<(Role, String, Uuid)> = strangers
        .iter()
        .map(|(role, _, id)| {
            let sub = format!("stranger-{}", role.as_str());
            (
                *role,
                w.token(&sub, &format!("{STRANGER_SCOPES} audit.read")),
                *id,
            )
        })
        .collect();
    let author = Some(s.records.user);

    for route in &routes {
        let name = name(route);
        let expect = expected(route).unwrap();
        // 1. Without credentials (one failed login on an audited route, nobody named).
        let before = audit_event_count(&w.app);
        let res = s
            .send_audited(route, None, None, &format!("{name}: no credentials"))
            .await;
        let status = res.status().as_u16();
        if matches!(
            expect,
            Expect::ConsolePage | Expect::ConsoleAction | Expect::SignIn(_)
        ) {
            // A refused console request leaves exactly one audit event; a redirect to the
            // sign-in page or a page served leaves none.
            let recorded = audit_event_count(&w.app) - before;
            let want = i64::from(status >= 400);
            assert_eq!(
                recorded, want,
                "{name}: {status} recorded {recorded} events"
            );
        }
        match expect {
            Expect::Fhir
            | Expect::Admin
            | Expect::BreakGlass
            | Expect::AuditTrail
            | Expect::Export => {
                assert_eq!(status, 401, "{name}: no credentials")
            }
            Expect::ConsolePage => {
                assert_eq!(status, 303, "{name}: no session");
                assert_eq!(res.headers()["location"], "/console/signin", "{name}");
            }
            Expect::ConsoleAction => assert_eq!(status, 403, "{name}: no session"),
            Expect::SignIn(documented) => {
                assert_eq!(status, documented, "{name}: no session");
            }
            Expect::Public => assert_eq!(status, 200, "{name}"),
        }
        // 2. Credentials lacking the route's scope: 403, even for the author of every
        //    record (who has every role and relationship the route could need).
        match route.action {
            Action::Fhir(resource, interaction) => {
                let token = w.token("author", &scopes_without(resource, interaction));
                let case = format!("{name}: scope missing");
                let res = s.send_audited(route, Some(&token), author, &case).await;
                assert_eq!(res.status().as_u16(), 403, "{case}");
            }
            Action::BreakGlass(_) => {
                let token = w.token(
                    "author",
                    &scopes_without(ResourceType::Patient, Interaction::Read),
                );
                let case = format!("{name}: scope missing");
                let res = s.send_audited(route, Some(&token), author, &case).await;
                assert_eq!(res.status().as_u16(), 403, "{case}");
            }
            Action::Export(_) => {
                // Every role the route could need, but no search scope of any type.
                let token = w.token(
                    "author",
                    "user/Patient.cru user/Observation.cru user/DocumentReference.cru user/Claim.cru",
                );
                let case = format!("{name}: search scopes missing");
                let res = s.send_audited(route, Some(&token), author, &case).await;
                assert_eq!(res.status().as_u16(), 403, "{case}");
            }
            Action::AuditTrail(_) => {
                let case = format!("{name}: audit.read scope missing");
                let po = Some(po_no_scope_id.as_uuid());
                let res = s.send_audited(route, Some(&po_no_scope), po, &case).await;
                assert_eq!(res.status().as_u16(), 403, "{case}");
            }
            Action::Admin(_) => {
                let case = format!("{name}: admin scope missing");
                let admin = Some(admin_no_scope_id.as_uuid());
                let res = s
                    .send_audited(route, Some(&admin_no_scope), admin, &case)
                    .await;
                assert_eq!(res.status().as_u16(), 403, "{case}");
            }
            _ => {}
        }
        // 3. Each role with `audit.read` on the audit trail: reviewers read it, a
        //    patient linked to no record and every other role are refused.
        if let Action::AuditTrail(_) = route.action {
            for (role, token, id) in &readers {
                let case = format!("{name}: {} with audit.read", role.as_str());
                let res = s.send_audited(route, Some(token), Some(*id), &case).await;
                let want = match policy::review::trail_scope(&[*role], true, None) {
                    Ok(_) => 200,
                    Err(_) => 403,
                };
                assert_eq!(res.status().as_u16(), want, "{case}");
            }
        }
        // 3. Each role on an export route: without an export grant 403, with one the
        //    step-up challenge (the strangers' tokens carry no recent MFA).
        if let Action::Export(op) = route.action {
            for (role, token, id) in &strangers {
                let case = format!("{name}: {}", role.as_str());
                let res = s.send_audited(route, Some(token), Some(*id), &case).await;
                let scopes = custodian::auth::ScopeSet::parse(STRANGER_SCOPES);
                let context = policy::smart_context(false, &[*role]);
                let allows = |r: ResourceType| scopes.allows(context, r, Interaction::Search);
                // Kick-off and download need the step-up; a status or cancel of a job
                // that is not theirs is a 404.
                use policy::export::Operation as Op;
                let want = match (policy::export::capability(&[*role], op, &allows), op) {
                    (Err(_), _) => 403,
                    (Ok(()), Op::KickOff(_) | Op::Download) => 401,
                    (Ok(()), Op::Status | Op::Cancel) => 404,
                };
                assert_eq!(res.status().as_u16(), want, "{case}");
            }
        }
        // 3. Each role without a relationship to the patient.
        if let Action::Fhir(resource, interaction) = route.action {
            for (role, token, id) in &strangers {
                let case = format!("{name}: {} without a relationship", role.as_str());
                let res = s.send_audited(route, Some(token), Some(*id), &case).await;
                let status = res.status().as_u16();
                match no_relationship_answer(
                    *role,
                    resource,
                    interaction,
                    w.facility.as_uuid(),
                    s.records.patient,
                ) {
                    Ok(documented) => assert_eq!(status, documented, "{case}"),
                    Err(()) => {
                        assert_eq!(status, 200, "{case}");
                        if method(route) != Method::HEAD {
                            let bundle: Value = res.json().await.unwrap();
                            let entries = bundle["entry"].as_array().map_or(0, Vec::len);
                            assert_eq!(entries, 0, "{case}: no rows outside the relationship");
                        }
                    }
                }
            }
        }
    }
}

/// Every audited route (FHIR and admin) × every refusal that comes before its handler,
/// without and with valid credentials: the documented answer, exactly one audit event,
/// and its actor — nobody before authentication, the user from then on.
#[tokio::test]
async fn every_audited_route_leaves_one_event_naming_the_actor_for_each_refusal() {
    let s = setup().await;
    let w = &s.w;
    let author = Some(s.records.user);
    let (admin_id, _) = w.user("admin-walker", &[Role::Admin]);
    let admin = w.token("admin-walker", "admin");
    let (gone_id, _) = w.user("walker-disabled", &[Role::Clinician, Role::Admin]);
    let gone = w.token("walker-disabled", &format!("{ALL} admin"));
    use diesel::RunQueryDsl;
    diesel::sql_query("UPDATE users SET disabled_at = now() WHERE id = $1")
        .bind::<diesel::sql_types::Uuid, _>(gone_id)
        .execute(&mut w.app.db.conn())
        .unwrap();
    let author_token = w.token("author", ALL);
    let (reviewer_id, _) = w.user("reviewer-walker", &[Role::PrivacyOfficer]);
    let reviewer = w.token("reviewer-walker", "audit.read");
    let oversized = "x".repeat(BODY_LIMIT + 1);
    for route in table().iter().filter(|r| {
        matches!(
            r.action,
            Action::Fhir(..)
                | Action::Admin(_)
                | Action::BreakGlass(_)
                | Action::AuditTrail(_)
                | Action::Export(_)
        )
    }) {
        let name = name(route);
        // The route's rightful caller: the author of every record, or an administrator.
        let (token, actor) = match route.action {
            Action::Admin(_) => (admin.as_str(), Some(admin_id.as_uuid())),
            Action::AuditTrail(_) => (reviewer.as_str(), Some(reviewer_id.as_uuid())),
            _ => (author_token.as_str(), author),
        };
        let bearer =
            |r: reqwest::RequestBuilder, t: &str| r.header("authorization", format!("Bearer {t}"));
        let cases: Vec<(&str, reqwest::RequestBuilder, u16, Option<Uuid>)> = vec![
            (
                "no token, a query token",
                s.request(route, None)
                    .query(&[("access_token", "x"), ("nickname", "x")]),
                401,
                None,
            ),
            (
                "no token, a declared body over the limit",
                s.request(route, None).body(oversized.clone()),
                401,
                None,
            ),
            (
                "disabled account, bad input",
                bearer(s.request(route, None), &gone)
                    .header("x-purpose-of-use", "SNOOP")
                    .body(oversized.clone()),
                403,
                Some(gone_id.as_uuid()),
            ),
            (
                "valid token, a declared body over the limit",
                bearer(s.request(route, None), token).body(oversized.clone()),
                413,
                actor,
            ),
            (
                "valid token, a bad purpose of use",
                bearer(s.request(route, None), token).header("x-purpose-of-use", "SNOOP"),
                400,
                actor,
            ),
        ];
        // The author holds no grant for a system-level export (services only): its
        // valid-token cases are refused before the body or the purpose is looked at.
        let author_refused = route.action
            == Action::Export(policy::export::Operation::KickOff(
                policy::export::Level::System,
            ));
        for (kind, req, status, actor) in cases {
            let status = if author_refused && actor.is_some() && status != 403 {
                403
            } else {
                status
            };
            let case = format!("{name}: {kind}");
            let before = last_seq(&w.app);
            let res = req.send().await.unwrap();
            assert_eq!(res.status().as_u16(), status, "{case}");
            let events = events_after(&w.app, before);
            assert_eq!(
                events.len(),
                1,
                "{case}: exactly one audit event: {events:?}"
            );
            assert_eq!(events[0].actor, actor, "{case}: the actor: {events:?}");
            let expected_outcome = if status == 400 || status == 413 {
                "error"
            } else {
                "deny"
            };
            assert_eq!(events[0].outcome, expected_outcome, "{case}");
        }
    }
}

/// The route table registers exactly the interactions the resource descriptors (and so
/// the CapabilityStatement) list.
#[test]
fn the_route_table_serves_exactly_the_described_fhir_interactions() {
    use custodian::fhir::resource;
    let routed: BTreeSet<(&str, String)> = table()
        .iter()
        .filter_map(|r| match r.action {
            Action::Fhir(kind, i) => Some((kind.as_str(), format!("{i:?}"))),
            _ => None,
        })
        .collect();
    let described: BTreeSet<(&str, String)> = resource::ALL
        .iter()
        .flat_map(|d| {
            d.interactions
                .iter()
                .map(move |i| (d.kind.as_str(), format!("{i:?}")))
        })
        .collect();
    assert_eq!(routed, described);
}
