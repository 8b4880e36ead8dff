//! Attribution in the audit trail (`docs/audit.md#one-event-per-request`): every request to
//! a PHI or admin route leaves exactly one event, naming the actor whenever authentication
//! succeeded — refusals by the edge, by the principal checks and by input validation
//! included; rate-limited floods are aggregated per source and window; the User-Agent is
//! stored as a class, never as text; and a missing scope or role answers the same for an
//! existing and a missing id.

use crate::api::resources::observation_json;
use crate::support::TestApp;
use crate::support::world::{World, patient_json};
use custodian::domain::UserId;
use custodian::policy::Role;
use diesel::prelude::*;
use reqwest::{Method, RequestBuilder};
use serde_json::{Value, json};
use std::time::Duration;
use uuid::Uuid;

/// One stored audit event, the columns these tests look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ev {
    pub seq: i64,
    pub action: String,
    pub resource_type: Option<String>,
    pub outcome: String,
    pub reason: Option<String>,
    pub actor: Option<Uuid>,
    pub source_ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    pub occurrences: Option<i32>,
}

type Row = (
    i64,
    String,
    Option<String>,
    String,
    Option<String>,
    Option<Uuid>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i32>,
);

/// Every audit event after sequence number `after`, in order.
pub fn events_after(app: &TestApp, after: i64) -> Vec<Ev> {
    use custodian::db::schema::audit_events::dsl as e;
    let rows: Vec<Row> = e::audit_events
        .filter(e::seq.gt(after))
        .order(e::seq)
        .select((
            e::seq,
            e::action,
            e::resource_type,
            e::outcome,
            e::deny_reason,
            e::actor_user_id,
            e::source_ip,
            e::user_agent,
            e::request_id,
            e::occurrences,
        ))
        .load(&mut app.db.conn())
        .unwrap();
    rows.into_iter()
        .map(|r| Ev {
            seq: r.0,
            action: r.1,
            resource_type: r.2,
            outcome: r.3,
            reason: r.4,
            actor: r.5,
            source_ip: r.6,
            user_agent: r.7,
            request_id: r.8,
            occurrences: r.9,
        })
        .collect()
}

/// The sequence number of the newest event (0 before the first).
pub fn last_seq(app: &TestApp) -> i64 {
    use custodian::db::schema::audit_events::dsl as e;
    e::audit_events
        .select(diesel::dsl::max(e::seq))
        .first::<Option<i64>>(&mut app.db.conn())
        .unwrap()
        .unwrap_or(0)
}

fn disable(w: &World, user: UserId) {
    diesel::sql_query("UPDATE users SET disabled_at = now() WHERE id = $1")
        .bind::<diesel::sql_types::Uuid, _>(user)
        .execute(&mut w.app.db.conn())
        .unwrap();
}

/// Sends `req` and returns its status and the events it left.
async fn send(w: &World, req: RequestBuilder) -> (u16, Vec<Ev>) {
    let before = last_seq(&w.app);
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, events_after(&w.app, before))
}

/// The body limit of [`every_refusal_kind_with_and_without_a_valid_token`]'s app.
const BODY_LIMIT: usize = 4096;

/// Each refusal kind, once without credentials and once with a valid token (or the
/// token of a disabled account): the answer, exactly one event, its outcome and reason,
/// and its actor — none without authentication, the user after it.
#[tokio::test]
async fn every_refusal_kind_with_and_without_a_valid_token() {
    // "no If-Match" is a refusal only with `fhir.require_if_match`.
    let w = World::with(|b, _| {
        b.set("server.body_limit_bytes", BODY_LIMIT as i64)
            .set("fhir.require_if_match", true)
    })
    .await;
    let (doc_id, doc) = w.user("dr-attrib", &[Role::Clinician]);
    let (gone_id, gone) = w.user("dr-disabled", &[Role::Clinician]);
    disable(&w, gone_id);
    let patient = w.create(&doc, &patient_json("MRN-8801", "Attribson")).await;
    let record = format!("/fhir/Patient/{patient}");
    let mut update = patient_json("MRN-8801", "Attribson");
    update["id"] = json!(patient.to_string());
    let oversized = "x".repeat(BODY_LIMIT * 2);
    let c = &w.app.client;
    let url = |p: &str| w.app.url(p);

    // (case, the request with `token` if any, the answer with a valid token)
    let cases = |token: Option<&str>| -> Vec<(&'static str, RequestBuilder, u16)> {
        let auth = |r: RequestBuilder| match token {
            Some(t) => r.header("authorization", format!("Bearer {t}")),
            None => r,
        };
        vec![
            (
                "unknown search parameter",
                auth(c.get(url("/fhir/Patient?nickname=x"))),
                422,
            ),
            (
                "bad search value",
                auth(c.get(url("/fhir/Patient?birthdate=yesterday"))),
                422,
            ),
            (
                "bad _elements on a read",
                auth(c.get(url(&format!("{record}?_elements=x")))),
                422,
            ),
            (
                "malformed JSON body",
                auth(c.post(url("/fhir/Patient")))
                    .header("content-type", "application/fhir+json")
                    .body("{\"resourceType\": "),
                400,
            ),
            (
                "data after the JSON document",
                auth(c.post(url("/fhir/Patient")))
                    .header("content-type", "application/fhir+json")
                    .body(format!("{}garbage", patient_json("MRN-8802", "Trailing"))),
                400,
            ),
            (
                "unknown field in the body",
                auth(c.post(url("/fhir/Patient")))
                    .header("content-type", "application/fhir+json")
                    .body(json!({"resourceType": "Patient", "bogus": 1}).to_string()),
                422,
            ),
            (
                "wrong Content-Type",
                auth(c.post(url("/fhir/Observation")))
                    .header("content-type", "text/plain")
                    .body("x"),
                415,
            ),
            (
                "declared body over the limit",
                auth(c.post(url("/fhir/Patient")))
                    .header("content-type", "application/fhir+json")
                    .body(oversized.clone()),
                413,
            ),
            (
                "bad purpose of use",
                auth(c.get(url(&record))).header("x-purpose-of-use", "SNOOP"),
                400,
            ),
            (
                "no If-Match",
                auth(c.put(url(&record)))
                    .header("content-type", "application/fhir+json")
                    .body(update.to_string()),
                428,
            ),
            (
                "malformed id",
                auth(c.get(url("/fhir/Observation/not-a-uuid"))),
                404,
            ),
            (
                "admin body with a bad Content-Type",
                auth(c.post(url("/api/admin/facilities")))
                    .header("content-type", "text/plain")
                    .body("x"),
                403,
            ),
        ]
    };

    // 1. Without credentials: 401, one failed login, nobody named.
    for (case, req, _) in cases(None) {
        let (status, events) = send(&w, req).await;
        assert_eq!(status, 401, "{case}: authentication comes before input");
        assert_eq!(events.len(), 1, "{case}: exactly one event: {events:?}");
        let e = &events[0];
        assert_eq!(
            (e.action.as_str(), e.outcome.as_str(), e.reason.as_deref()),
            ("login-failed", "deny", Some("invalid-credentials")),
            "{case}"
        );
        assert_eq!(e.actor, None, "{case}");
    }
    // 2. With the valid token: the input's own answer, one event, the user named.
    for (case, req, expected) in cases(Some(&doc)) {
        let (status, events) = send(&w, req).await;
        assert_eq!(status, expected, "{case}");
        assert_eq!(events.len(), 1, "{case}: exactly one event: {events:?}");
        let e = &events[0];
        assert_eq!(
            e.actor,
            Some(doc_id.as_uuid()),
            "{case}: the actor is named"
        );
        if expected == 403 {
            // A clinician calling the admin API: refused before the body is looked at.
            assert_eq!(
                (e.outcome.as_str(), e.reason.as_deref()),
                ("deny", Some("missing-scope")),
                "{case}"
            );
        } else {
            assert_eq!(
                (e.outcome.as_str(), e.reason.as_deref()),
                ("error", None),
                "{case}"
            );
        }
        assert_ne!(e.action, "login-failed", "{case}");
    }
    // 3. A disabled account: 403 for every one of them, one denial naming the account.
    for (case, req, _) in cases(Some(&gone)) {
        let (status, events) = send(&w, req).await;
        assert_eq!(
            status, 403,
            "{case}: the account is refused before its input"
        );
        assert_eq!(events.len(), 1, "{case}: exactly one event: {events:?}");
        let e = &events[0];
        assert_eq!(
            (e.outcome.as_str(), e.reason.as_deref()),
            ("deny", Some("revoked")),
            "{case}"
        );
        assert_eq!(
            e.actor,
            Some(gone_id.as_uuid()),
            "{case}: the account is named"
        );
        assert_ne!(
            e.action, "login-failed",
            "{case}: a known account is not a failed login"
        );
    }
    // 4. A token in the query string is refused like a bad token, with or without a
    //    valid header (it would be logged): 401, one failed login.
    for token in [None, Some(doc.as_str())] {
        let mut req = c.get(url("/fhir/Patient?access_token=x"));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let (status, events) = send(&w, req).await;
        assert_eq!(status, 401, "access_token in the query ({token:?})");
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].action, "login-failed");
        assert_eq!(events[0].actor, None);
    }
    // The refused bodies stored nothing.
    let patients: i64 = custodian::db::schema::patients::table
        .count()
        .get_result(&mut w.app.db.conn())
        .unwrap();
    assert_eq!(patients, 1);
}

/// The per-address limit refuses before authentication (a flood stays cheap), and its
/// refusals are aggregated: the first of a window is recorded at once, the rest are
/// counted and recorded as one summary once the window has passed — by the next refusal,
/// or by the sweep. Console and public routes are limited without events.
#[tokio::test]
async fn per_address_floods_leave_one_event_per_window_with_a_count() {
    let w = World::with(|b, _| {
        b.manual_clock()
            .set("ratelimit.per_address_per_minute", 1)
            .set("ratelimit.per_address_burst", 3)
    })
    .await;
    let (_, doc) = w.user("dr-flood", &[Role::Clinician]);
    // Request 1 of the burst of 3.
    let patient = w.create(&doc, &patient_json("MRN-8811", "Floodson")).await;
    let path = format!("/fhir/Patient/{patient}");
    let read = || {
        w.app
            .client
            .get(w.app.url(&path))
            .header("authorization", format!("Bearer {doc}"))
            .header("user-agent", "curl/8.5.0")
    };
    for _ in 0..2 {
        assert_eq!(read().send().await.unwrap().status(), 200);
    }
    let start = last_seq(&w.app);
    // The first refusal of the window: recorded as itself.
    let (status, events) = send(&w, read()).await;
    assert_eq!(status, 429);
    assert_eq!(events.len(), 1, "{events:?}");
    let first = &events[0];
    assert_eq!(
        (first.action.as_str(), first.resource_type.as_deref()),
        ("read", Some("Patient"))
    );
    assert_eq!(
        (first.outcome.as_str(), first.reason.as_deref()),
        ("deny", Some("rate-limited"))
    );
    assert_eq!(
        first.actor, None,
        "refused before authentication, on purpose"
    );
    assert_eq!(first.source_ip.as_deref(), Some("127.0.0.1"));
    assert!(first.request_id.is_some());
    assert_eq!(first.occurrences, None);
    // The flood: counted, not recorded — also without a token, also on a search, and a
    // declared oversized body is limited before its size is looked at.
    for _ in 0..20 {
        assert_eq!(read().send().await.unwrap().status(), 429);
    }
    let (status, events) = send(&w, w.app.client.get(w.app.url("/fhir/Patient"))).await;
    assert_eq!(status, 429);
    assert_eq!(events.len(), 1, "a search opens its own window: {events:?}");
    assert_eq!(events[0].action, "search");
    for _ in 0..4 {
        let search = w.app.client.get(w.app.url("/fhir/Patient?family=x"));
        assert_eq!(search.send().await.unwrap().status(), 429);
    }
    assert_eq!(
        events_after(&w.app, start).len(),
        2,
        "the flood is only counted"
    );
    // Console and public routes are limited too, without audit events.
    assert_eq!(w.app.get("/console/signin").await.status(), 429);
    assert_eq!(w.app.get("/fhir/metadata").await.status(), 429);
    // An API path no route serves is limited like the rest.
    assert_eq!(w.app.get("/fhir/Nothing").await.status(), 429);
    assert_eq!(events_after(&w.app, start).len(), 2);

    // After the window, the read window's count is recorded as one summary — by the next
    // refusal of that source and action, or by the sweep if it came first — then that
    // refusal opens a new window; the search window's count is recorded by the sweep.
    let before = last_seq(&w.app);
    w.app.clock().advance(Duration::from_secs(61));
    assert_eq!(
        read().send().await.unwrap().status(),
        429,
        "the limiter itself runs on real time: still limited"
    );
    let events = wait_for(&w.app, before, 3).await;
    let summaries: Vec<&Ev> = events.iter().filter(|e| e.occurrences.is_some()).collect();
    assert_eq!(summaries.len(), 2, "{events:?}");
    let read_summary = summaries.iter().find(|e| e.action == "read").unwrap();
    assert_eq!(read_summary.occurrences, Some(20), "the 20 counted reads");
    assert_eq!(read_summary.resource_type.as_deref(), Some("Patient"));
    assert_eq!(
        (
            read_summary.outcome.as_str(),
            read_summary.reason.as_deref()
        ),
        ("deny", Some("rate-limited"))
    );
    assert_eq!(read_summary.source_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(read_summary.actor, None);
    assert_eq!(read_summary.request_id, None);
    assert_eq!(read_summary.user_agent, None);
    let search_summary = summaries.iter().find(|e| e.action == "search").unwrap();
    assert_eq!(search_summary.occurrences, Some(4));
    let reopened: Vec<&Ev> = events.iter().filter(|e| e.occurrences.is_none()).collect();
    assert_eq!(reopened.len(), 1, "{events:?}");
    assert_eq!(reopened[0].action, "read");
    assert!(reopened[0].request_id.is_some());
    assert!(
        read_summary.seq < reopened[0].seq,
        "a window's count comes before the next window"
    );
    // Every refusal is accounted for: 1 + 20 reads, 1 + 4 searches, 1 read after.
    let all = events_after(&w.app, start);
    assert_eq!(all.len(), 5, "{all:?}");
    let total: i64 = all
        .iter()
        .map(|e| i64::from(e.occurrences.unwrap_or(1)))
        .sum();
    assert_eq!(total, 27);
}

/// The events after `after` once there are `n` of them (summaries of closed windows are
/// recorded by a sweep every two seconds; this waits at most ten).
async fn wait_for(app: &TestApp, after: i64, n: usize) -> Vec<Ev> {
    for _ in 0..50 {
        let events = events_after(app, after);
        if events.len() >= n {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    events_after(app, after)
}

/// The per-principal limit refuses after authentication: its refusals name the user,
/// and are aggregated per user and window.
#[tokio::test]
async fn per_principal_floods_name_the_actor_and_are_aggregated() {
    let w = World::with(|b, _| {
        b.manual_clock()
            .set("ratelimit.per_principal_per_minute", 1)
            .set("ratelimit.per_principal_burst", 2)
    })
    .await;
    let (doc_id, doc) = w.user("dr-busy", &[Role::Clinician]);
    let patient = w.create(&doc, &patient_json("MRN-8821", "Busyson")).await;
    let path = format!("/fhir/Patient/{patient}");
    assert_eq!(w.get(&path, &doc).await.status(), 200);
    let start = last_seq(&w.app);
    let (status, events) = send(
        &w,
        w.app
            .client
            .get(w.app.url(&path))
            .header("authorization", format!("Bearer {doc}")),
    )
    .await;
    assert_eq!(status, 429);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        events[0].actor,
        Some(doc_id.as_uuid()),
        "the principal is named"
    );
    assert_eq!(events[0].reason.as_deref(), Some("rate-limited"));
    assert_eq!(events[0].action, "read");
    // With bad input too: the limit comes before the input, and is only counted.
    for p in [
        path.clone(),
        format!("{path}?_elements=x"),
        "/fhir/Patient/x".into(),
    ] {
        assert_eq!(w.get(&p, &doc).await.status(), 429, "{p}");
    }
    assert_eq!(events_after(&w.app, start).len(), 1);
    // Another user is not limited by this one.
    let (_, other) = w.user("dr-calm", &[Role::Clinician]);
    assert_eq!(w.get("/fhir/Patient", &other).await.status(), 200);

    let before = last_seq(&w.app);
    w.app.clock().advance(Duration::from_secs(61));
    assert_eq!(w.get(&path, &doc).await.status(), 429);
    let events = wait_for(&w.app, before, 2).await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0].occurrences, Some(3), "the three counted refusals");
    assert_eq!(events[0].actor, Some(doc_id.as_uuid()));
    assert_eq!(events[0].reason.as_deref(), Some("rate-limited"));
    assert_eq!(
        events[0].source_ip, None,
        "a principal's summary names no address"
    );
    assert_eq!(events[1].occurrences, None);
    assert_eq!(events[1].actor, Some(doc_id.as_uuid()));
}

/// A missing scope or role is decided before anything the request names is looked up: an
/// existing id, a missing id and a malformed one get the same answer, and so does a create
/// naming an existing or a missing patient.
#[tokio::test]
async fn a_missing_scope_or_role_answers_the_same_for_existing_and_missing_ids() {
    let w = World::new().await;
    let (author_id, author) = w.user("dr-author", &[Role::Clinician]);
    let patient = w
        .create(&author, &patient_json("MRN-8831", "Existson"))
        .await;
    let res = w
        .send(
            Method::POST,
            "/fhir/Observation",
            &author,
            Some(&observation_json(patient)),
        )
        .await;
    assert_eq!(res.status(), 201);
    let observation: Value = res.json().await.unwrap();
    let observation = observation["id"].as_str().unwrap().to_string();
    let missing = Uuid::new_v4();

    // The author without the Patient and Observation scopes; an administrator (no FHIR
    // role at all) with every scope.
    let no_scope = w.token("dr-author", "user/Claim.cruds");
    let (admin_id, admin) = w.user("admin-probe", &[Role::Admin]);
    for (who, token, actor, reason) in [
        ("scope missing", &no_scope, author_id, "missing-scope"),
        ("role missing", &admin, admin_id, "missing-role"),
    ] {
        let mut update = observation_json(patient);
        let probes: Vec<(String, Method, Vec<String>, Option<Value>)> = vec![
            (
                "Patient read".into(),
                Method::GET,
                vec![
                    format!("/fhir/Patient/{patient}"),
                    format!("/fhir/Patient/{missing}"),
                    "/fhir/Patient/not-a-uuid".into(),
                ],
                None,
            ),
            (
                "Observation read".into(),
                Method::GET,
                vec![
                    format!("/fhir/Observation/{observation}"),
                    format!("/fhir/Observation/{missing}"),
                ],
                None,
            ),
            (
                "Observation delete".into(),
                Method::DELETE,
                vec![
                    format!("/fhir/Observation/{observation}"),
                    format!("/fhir/Observation/{missing}"),
                ],
                None,
            ),
            {
                update["id"] = json!(observation);
                (
                    "Observation update".into(),
                    Method::PUT,
                    vec![
                        format!("/fhir/Observation/{observation}"),
                        format!("/fhir/Observation/{missing}"),
                    ],
                    Some(update.clone()),
                )
            },
        ];
        for (what, method, paths, body) in probes {
            let mut answers = Vec::new();
            for path in &paths {
                let mut req = w
                    .app
                    .client
                    .request(method.clone(), w.app.url(path))
                    .header("authorization", format!("Bearer {token}"));
                if let Some(b) = &body {
                    req = req
                        .header("content-type", "application/fhir+json")
                        .header("if-match", "W/\"1\"")
                        .body(b.to_string());
                }
                let before = last_seq(&w.app);
                let res = req.send().await.unwrap();
                let status = res.status().as_u16();
                let request_id = res.headers()["x-request-id"].to_str().unwrap().to_string();
                let text = res.text().await.unwrap().replace(&request_id, "<id>");
                let events = events_after(&w.app, before);
                assert_eq!(events.len(), 1, "{who} {what} {path}: {events:?}");
                assert_eq!(events[0].actor, Some(actor.as_uuid()), "{who} {what}");
                assert_eq!(events[0].reason.as_deref(), Some(reason), "{who} {what}");
                answers.push((status, text));
            }
            assert_eq!(answers[0].0, 403, "{who} {what}");
            for (path, answer) in paths.iter().zip(&answers) {
                assert_eq!(
                    answer, &answers[0],
                    "{who} {what}: {path} answers differently"
                );
            }
        }
        // A create names a patient: an existing and a missing one get the same answer.
        let mut answers = Vec::new();
        for subject in [patient, missing] {
            let res = w
                .send(
                    Method::POST,
                    "/fhir/Observation",
                    token,
                    Some(&observation_json(subject)),
                )
                .await;
            let status = res.status().as_u16();
            let request_id = res.headers()["x-request-id"].to_str().unwrap().to_string();
            answers.push((
                status,
                res.text().await.unwrap().replace(&request_id, "<id>"),
            ));
        }
        assert_eq!(answers[0].0, 403, "{who}: create");
        assert_eq!(
            answers[0], answers[1],
            "{who}: create for an existing or a missing patient"
        );
    }
}

/// The User-Agent header is free text the caller controls: only its class is stored.
#[tokio::test]
async fn the_user_agent_reaches_the_trail_as_a_class_never_as_text() {
    let w = World::new().await;
    let (_, doc) = w.user("dr-agent", &[Role::Clinician]);
    let patient = w.create(&doc, &patient_json("MRN-8841", "Agentson")).await;
    let path = format!("/fhir/Patient/{patient}");
    let cases = [
        ("CANARY Jane Doe 123-45-6789", "other"),
        ("curl/8.5.0 CANARY Jane Doe 123-45-6789", "command-line"),
        (
            "Mozilla/5.0 (X11; Linux x86_64) CANARY Jane Doe 123-45-6789",
            "browser",
        ),
        ("python-requests/2.31 CANARY 123-45-6789", "library"),
    ];
    for (agent, class) in cases {
        for token in [Some(doc.as_str()), None] {
            let mut req = w
                .app
                .client
                .get(w.app.url(&path))
                .header("user-agent", agent);
            if let Some(t) = token {
                req = req.header("authorization", format!("Bearer {t}"));
            }
            let (_, events) = send(&w, req).await;
            assert_eq!(events.len(), 1);
            assert_eq!(events[0].user_agent.as_deref(), Some(class), "{agent}");
        }
    }
    #[derive(QueryableByName)]
    struct Text {
        #[diesel(sql_type = diesel::sql_types::Text)]
        t: String,
    }
    let rows: Vec<Text> =
        diesel::sql_query("SELECT string_agg(row_to_json(e)::text, '') AS t FROM audit_events e")
            .load(&mut w.app.db.conn())
            .unwrap();
    let all = &rows[0].t;
    for leaked in ["CANARY", "Jane", "123-45-6789", "curl/8", "Mozilla"] {
        assert!(!all.contains(leaked), "{leaked} reached the audit trail");
    }
}
