//! FHIR interoperability (issue 16): what stock clients rely on, over HTTP against the
//! real app and PostgreSQL — absolute URLs, no empty arrays, totals that count only what
//! the caller may see, updates without `If-Match` (and honoured when sent), `Prefer`,
//! conditional create, `_elements` with mandatory elements and `SUBSETTED`, content
//! negotiation — and a stock client (npm `fhir-kit-client`) driven against the server
//! with every response checked by an independent R4 validator (`@medplum/core`).

use crate::api::resources::observation_json;
use crate::support::world::{World, patient_json};
use crate::support::{PUBLIC_URL, free_port, test_cert};
use custodian::policy::Role;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;

const SCOPES: &str = "user/Patient.cruds user/Observation.cruds";

/// FHIR JSON has no empty arrays or objects anywhere.
fn assert_no_empty(v: &Value, at: &str) {
    match v {
        Value::Array(a) => {
            assert!(!a.is_empty(), "empty array at {at}");
            for (i, x) in a.iter().enumerate() {
                assert_no_empty(x, &format!("{at}[{i}]"));
            }
        }
        Value::Object(o) => {
            assert!(!o.is_empty(), "empty object at {at}");
            for (k, x) in o {
                assert_no_empty(x, &format!("{at}.{k}"));
            }
        }
        _ => {}
    }
}

async fn json_of(res: reqwest::Response) -> Value {
    let v: Value = res.json().await.unwrap();
    assert_no_empty(&v, "$");
    v
}

fn next_link(b: &Value) -> Option<String> {
    b["link"]
        .as_array()?
        .iter()
        .find(|l| l["relation"] == "next")
        .map(|l| l["url"].as_str().unwrap().to_string())
}

#[tokio::test]
async fn searchsets_have_absolute_links_totals_of_what_the_caller_sees_and_no_empty_arrays() {
    let w = World::new().await;
    let (_, doc) = w.user("dr-a", &[Role::Clinician]);
    let (_, other) = w.user("dr-b", &[Role::Clinician]);
    for i in 0..3 {
        w.create(&doc, &patient_json(&format!("MRN-T{i}"), "Totalled"))
            .await;
    }
    // The same name on another clinician's care team: never counted for dr-a.
    w.create(&other, &patient_json("MRN-T9", "Totalled")).await;

    let base = format!("{PUBLIC_URL}/fhir/Patient");
    let res = w
        .get(
            "/fhir/Patient?family=totalled&_count=2&_total=accurate",
            &doc,
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let b = json_of(res).await;
    assert_eq!(b["total"], 3, "only what the caller may see is counted");
    let entries = b["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    for e in entries {
        assert_eq!(
            e["fullUrl"],
            format!("{base}/{}", e["resource"]["id"].as_str().unwrap())
        );
    }
    for l in b["link"].as_array().unwrap() {
        assert!(
            l["url"].as_str().unwrap().starts_with(&format!("{base}?")),
            "{l}"
        );
    }
    let next = next_link(&b).unwrap();
    let page2 = json_of(w.get(&next, &doc).await).await;
    assert_eq!(page2["entry"].as_array().unwrap().len(), 1);
    assert_eq!(page2["total"], 3);
    assert!(next_link(&page2).is_none());

    // No total unless asked for.
    let plain = json_of(w.get("/fhir/Patient?family=totalled", &doc).await).await;
    assert!(plain.get("total").is_none());

    // `_summary=count`: the total alone, audited as a search touching no patient.
    let counted = json_of(
        w.get("/fhir/Patient?family=totalled&_summary=count", &doc)
            .await,
    )
    .await;
    assert_eq!(counted["total"], 3);
    assert!(counted.get("entry").is_none(), "{counted}");
    let last = w.audit_events().pop().unwrap();
    assert_eq!((last.0.as_str(), last.1.as_str()), ("search", "permit"));
    assert!(last.2.is_empty());
    let other_count = json_of(
        w.get("/fhir/Patient?family=totalled&_summary=count", &other)
            .await,
    )
    .await;
    assert_eq!(other_count["total"], 1);

    // An empty search has no `entry` (and no other empty array).
    let empty = json_of(
        w.get("/fhir/Patient?family=nobody&_total=accurate", &doc)
            .await,
    )
    .await;
    assert!(empty.get("entry").is_none(), "{empty}");
    assert_eq!(empty["total"], 0);
    assert_eq!(
        empty["link"][0]["url"],
        format!("{base}?family=nobody&_total=accurate")
    );

    // Every resource type counts under its own scope.
    let (_, doc_obs) = (0, w.token("dr-a", SCOPES));
    let patient = w.create(&doc, &patient_json("MRN-T5", "Observed")).await;
    for _ in 0..2 {
        let res = w
            .send(
                Method::POST,
                "/fhir/Observation",
                &doc_obs,
                Some(&observation_json(patient)),
            )
            .await;
        assert_eq!(res.status(), StatusCode::CREATED);
    }
    let obs = json_of(
        w.get(
            &format!("/fhir/Observation?patient={patient}&_total=accurate"),
            &doc_obs,
        )
        .await,
    )
    .await;
    assert_eq!(obs["total"], 2);
    assert!(
        obs["entry"][0]["fullUrl"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{PUBLIC_URL}/fhir/Observation/"))
    );
    let unseen = w
        .get(
            &format!("/fhir/Observation?patient={patient}&_summary=count"),
            &w.token("dr-b", SCOPES),
        )
        .await;
    assert_eq!(json_of(unseen).await["total"], 0);

    for bad in [
        "_total=maybe",
        "_summary=text",
        "_total=accurate&_total=none",
    ] {
        let res = w.get(&format!("/fhir/Patient?{bad}"), &doc).await;
        assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }
}

#[tokio::test]
async fn updates_need_no_if_match_honour_a_sent_one_and_answer_the_whole_resource() {
    let w = World::new().await;
    let (_, doc) = w.user("dr-a", &[Role::Clinician]);
    let id = w.create(&doc, &patient_json("MRN-U1", "Updated")).await;
    let path = format!("/fhir/Patient/{id}");
    let mut body = patient_json("MRN-U1", "Renamed");
    body["id"] = json!(id.to_string());
    let put = |if_match: Option<&'static str>, prefer: Option<&'static str>| {
        let mut req = w
            .app
            .client
            .put(w.app.url(&path))
            .header("authorization", format!("Bearer {doc}"))
            .header("content-type", "application/fhir+json")
            .body(body.to_string());
        if let Some(v) = if_match {
            req = req.header("if-match", v);
        }
        if let Some(v) = prefer {
            req = req.header("prefer", v);
        }
        req.send()
    };

    // No If-Match (what stock clients send): accepted, the whole resource answered.
    let res = put(None, None).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["etag"], "W/\"2\"");
    let p = json_of(res).await;
    assert_eq!(p["name"][0]["family"], "Renamed");
    assert_eq!(p["telecom"][0]["value"], "555-0100");
    assert_eq!(p["meta"]["versionId"], "2");
    assert!(p["meta"]["lastUpdated"].is_string());

    // A stale If-Match is a 412 and changes nothing.
    let res = put(Some("W/\"1\""), None).await.unwrap();
    assert_eq!(res.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(json_of(res).await["resourceType"], "OperationOutcome");
    let now = json_of(w.get(&path, &doc).await).await;
    assert_eq!(now["meta"]["versionId"], "2");

    // The current one is accepted; `Prefer: return=minimal` answers no body.
    let res = put(Some("W/\"2\""), Some("return=minimal")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["etag"], "W/\"3\"");
    assert_eq!(
        res.headers()["content-location"],
        format!("{PUBLIC_URL}/fhir/Patient/{id}/_history/3").as_str()
    );
    assert!(res.text().await.unwrap().is_empty());
    let res = put(None, Some("return=representation")).await.unwrap();
    assert_eq!(json_of(res).await["meta"]["versionId"], "4");

    // The same for a record type (the generic handler): no If-Match, then a stale one.
    let token = w.token("dr-a", SCOPES);
    let created = w
        .send(
            Method::POST,
            "/fhir/Observation",
            &token,
            Some(&observation_json(id)),
        )
        .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let location = created.headers()["location"].to_str().unwrap().to_string();
    let obs = json_of(created).await;
    let obs_id = obs["id"].as_str().unwrap();
    assert_eq!(
        location,
        format!("{PUBLIC_URL}/fhir/Observation/{obs_id}/_history/1")
    );
    let mut obs_body = observation_json(id);
    obs_body["id"] = json!(obs_id);
    obs_body["status"] = json!("amended");
    let obs_path = format!("/fhir/Observation/{obs_id}");
    let res = w
        .send(Method::PUT, &obs_path, &token, Some(&obs_body))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let o = json_of(res).await;
    assert_eq!(
        (o["status"].as_str(), o["meta"]["versionId"].as_str()),
        (Some("amended"), Some("2"))
    );
    let stale = w
        .app
        .client
        .put(w.app.url(&obs_path))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/fhir+json")
        .header("if-match", "W/\"1\"")
        .body(obs_body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), StatusCode::PRECONDITION_FAILED);
}

#[tokio::test]
async fn if_match_is_required_only_when_the_setting_says_so() {
    let w = World::with(|b, _| b.set("fhir.require_if_match", true)).await;
    let (_, doc) = w.user("dr-a", &[Role::Clinician]);
    let id = w.create(&doc, &patient_json("MRN-U2", "Strict")).await;
    let mut body = patient_json("MRN-U2", "Strict");
    body["id"] = json!(id.to_string());
    let res = w
        .send(
            Method::PUT,
            &format!("/fhir/Patient/{id}"),
            &doc,
            Some(&body),
        )
        .await;
    assert_eq!(res.status(), StatusCode::PRECONDITION_REQUIRED);
    let cs = json_of(w.app.get("/fhir/metadata").await).await;
    assert_eq!(
        cs["rest"][0]["resource"][0]["versioning"],
        "versioned-update"
    );
}

#[tokio::test]
async fn conditional_create_answers_one_visible_match_refuses_several_and_ignores_the_unseen() {
    let w = World::new().await;
    let (_, doc) = w.user("dr-a", &[Role::Clinician]);
    let (_, other) = w.user("dr-b", &[Role::Clinician]);
    let post = |token: &str, body: &Value, if_none_exist: &str| {
        w.app
            .client
            .post(w.app.url("/fhir/Patient"))
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/fhir+json")
            .header("if-none-exist", if_none_exist.to_string())
            .body(body.to_string())
            .send()
    };
    let count = || {
        use custodian::db::schema::patients::dsl::*;
        use diesel::prelude::*;
        patients
            .count()
            .get_result::<i64>(&mut w.app.db.conn())
            .unwrap()
    };

    let body = patient_json("MRN-C1", "Conditional");
    let first = post(&doc, &body, "identifier=urn:custodian:mrn|MRN-C1")
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let created = json_of(first).await;
    let events = w.audit_events().len();
    let again = post(&doc, &body, "identifier=urn:custodian:mrn|MRN-C1")
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(
        again.headers()["location"],
        format!(
            "{PUBLIC_URL}/fhir/Patient/{}/_history/1",
            created["id"].as_str().unwrap()
        )
        .as_str()
    );
    let existing = json_of(again).await;
    assert_eq!(existing["id"], created["id"]);
    assert_eq!(existing["name"][0]["family"], "Conditional");
    assert_eq!(count(), 1, "nothing was created");
    // One event: the read of the match, naming its patient.
    let trail = w.audit_events();
    assert_eq!(trail.len(), events + 1);
    let last = trail.last().unwrap();
    assert_eq!((last.0.as_str(), last.1.as_str()), ("read", "permit"));
    assert_eq!(last.2[0].to_string(), created["id"].as_str().unwrap());

    // Several matches: 412, nothing created.
    w.create(&doc, &patient_json("MRN-C2", "Twin")).await;
    w.create(&doc, &patient_json("MRN-C3", "Twin")).await;
    let several = post(&doc, &patient_json("MRN-C4", "Twin"), "family=twin")
        .await
        .unwrap();
    assert_eq!(several.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(json_of(several).await["resourceType"], "OperationOutcome");
    assert_eq!(count(), 3);

    // A match the caller may not see does not count: dr-b creates its own (the search
    // is scoped like dr-b's searches), so the response reveals nothing of dr-a's patient.
    let unseen = post(&other, &patient_json("MRN-C5", "Twin"), "family=twin")
        .await
        .unwrap();
    assert_eq!(unseen.status(), StatusCode::CREATED);
    assert_eq!(count(), 4);

    // Bad conditions: not a search of this type, or no criterion at all.
    for bad in ["nickname=x", "_count=1", ""] {
        let res = post(&doc, &patient_json("MRN-C6", "Bad"), bad)
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY, "{bad:?}");
    }
    assert_eq!(count(), 4);

    // The same condition in the create's query string (how fhirpy sends it) is never
    // ignored: a match answers it, several are a 412, an unknown parameter a 422, and
    // both forms at once a 400; `_format` alone is a plain create.
    let post_query = |query: &str, header: Option<&str>, body: &Value| {
        let mut req = w
            .app
            .client
            .post(w.app.url(&format!("/fhir/Patient?{query}")))
            .header("authorization", format!("Bearer {doc}"))
            .header("content-type", "application/fhir+json")
            .body(body.to_string());
        if let Some(h) = header {
            req = req.header("if-none-exist", h.to_string());
        }
        req.send()
    };
    let body = patient_json("MRN-C1", "Conditional");
    let res = post_query("identifier=urn:custodian:mrn|MRN-C1", None, &body)
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(json_of(res).await["id"], created["id"]);
    let twin = patient_json("MRN-C7", "Twin");
    for (query, header, want) in [
        ("family=twin", None, StatusCode::PRECONDITION_FAILED),
        ("nickname=x", None, StatusCode::UNPROCESSABLE_ENTITY),
        ("_count=1", None, StatusCode::UNPROCESSABLE_ENTITY),
        ("family=twin", Some("family=twin"), StatusCode::BAD_REQUEST),
    ] {
        let res = post_query(query, header, &twin).await.unwrap();
        assert_eq!(res.status(), want, "{query}");
        assert_eq!(json_of(res).await["resourceType"], "OperationOutcome");
    }
    assert_eq!(count(), 4, "nothing was created");
    let res = post_query("_format=json", None, &twin).await.unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(count(), 5);

    // Record types too: an Observation matched by patient and code.
    let token = w.token("dr-a", SCOPES);
    let patient = uuid::Uuid::parse_str(created["id"].as_str().unwrap()).unwrap();
    let cond = format!("patient={patient}&code=http://loinc.org|8867-4");
    let mut ids = Vec::new();
    for want in [StatusCode::CREATED, StatusCode::OK] {
        let res = w
            .app
            .client
            .post(w.app.url("/fhir/Observation"))
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/fhir+json")
            .header("if-none-exist", cond.as_str())
            .body(observation_json(patient).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), want);
        ids.push(json_of(res).await["id"].clone());
    }
    assert_eq!(ids[0], ids[1]);
}

#[tokio::test]
async fn elements_keep_the_mandatory_elements_and_tag_the_result_subsetted() {
    let w = World::new().await;
    let (_, doc) = w.user("dr-a", &[Role::Clinician]);
    let token = w.token("dr-a", SCOPES);
    let patient = w.create(&doc, &patient_json("MRN-E9", "Subset")).await;
    let res = w
        .send(
            Method::POST,
            "/fhir/Observation",
            &token,
            Some(&observation_json(patient)),
        )
        .await;
    let obs = json_of(res).await;
    let read = format!(
        "/fhir/Observation/{}?_elements=subject",
        obs["id"].as_str().unwrap()
    );
    let search = format!("/fhir/Observation?patient={patient}&_elements=subject");
    let searched = json_of(w.get(&search, &token).await).await;
    for r in [
        json_of(w.get(&read, &token).await).await,
        searched["entry"][0]["resource"].clone(),
    ] {
        assert_eq!(r["status"], "final", "{r}");
        assert_eq!(r["code"]["coding"][0]["code"], "8867-4");
        assert!(r["subject"].is_object());
        assert!(r.get("valueQuantity").is_none());
        assert_eq!(
            r["meta"]["tag"],
            json!([{ "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED" }])
        );
    }
    // Without `_elements`: the whole resource, untagged.
    let whole = json_of(
        w.get(
            &format!("/fhir/Observation/{}", obs["id"].as_str().unwrap()),
            &token,
        )
        .await,
    )
    .await;
    assert!(whole["meta"].get("tag").is_none());
}

#[tokio::test]
async fn json_is_negotiated_xml_and_other_fhir_versions_are_406_and_lenient_handling_ignores_unknowns()
 {
    let w = World::new().await;
    let (_, doc) = w.user("dr-a", &[Role::Clinician]);
    let id = w.create(&doc, &patient_json("MRN-N1", "Negotiated")).await;
    let get = |path: String, accept: Option<&'static str>, prefer: Option<&'static str>| {
        let mut req = w
            .app
            .client
            .get(w.app.url(&path))
            .header("authorization", format!("Bearer {doc}"));
        if let Some(a) = accept {
            req = req.header("accept", a);
        }
        if let Some(p) = prefer {
            req = req.header("prefer", p);
        }
        req.send()
    };
    let read = format!("/fhir/Patient/{id}");
    for (path, accept, want) in [
        (format!("{read}?_format=json"), None, 200),
        (format!("{read}?_format=application/fhir%2Bjson"), None, 200),
        (
            read.clone(),
            Some("application/fhir+json; fhirVersion=4.0"),
            200,
        ),
        (
            read.clone(),
            Some("application/json, text/plain;q=0.5"),
            200,
        ),
        (read.clone(), Some("*/*"), 200),
        (format!("{read}?_format=xml"), None, 406),
        (read.clone(), Some("application/fhir+xml"), 406),
        (
            read.clone(),
            Some("application/fhir+json; fhirVersion=3.0"),
            406,
        ),
        (
            "/fhir/Patient?family=negotiated".into(),
            Some("application/xml"),
            406,
        ),
        (
            "/fhir/Patient?family=negotiated&_format=xml".into(),
            None,
            406,
        ),
        ("/fhir/metadata".into(), Some("application/fhir+xml"), 406),
        ("/fhir/metadata?_format=json".into(), None, 200),
    ] {
        let res = get(path.clone(), accept, None).await.unwrap();
        assert_eq!(res.status().as_u16(), want, "{path} {accept:?}");
        let body = json_of(res).await;
        if want == 406 {
            assert_eq!(body["resourceType"], "OperationOutcome", "{path}");
        }
    }
    // Unknown parameters: strict by default (422), ignored with handling=lenient.
    let q = "/fhir/Patient?family=negotiated&nickname=x".to_string();
    for (prefer, want) in [
        (None, 422),
        (Some("handling=strict"), 422),
        (Some("handling=lenient"), 200),
    ] {
        let res = get(q.clone(), None, prefer).await.unwrap();
        assert_eq!(res.status().as_u16(), want, "{prefer:?}");
        if want == 200 {
            assert_eq!(json_of(res).await["entry"].as_array().unwrap().len(), 1);
        }
    }
    // Lenient handling never relaxes a known parameter's check.
    let res = get(
        "/fhir/Patient?_count=1000".into(),
        None,
        Some("handling=lenient"),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn the_capability_statement_declares_the_base_conditional_create_and_cors() {
    let w = World::with(|b, _| {
        b.set(
            "server.cors_allowed_origins",
            toml::Value::Array(vec!["https://app.example".into()]),
        )
    })
    .await;
    let cs = json_of(w.app.get("/fhir/metadata").await).await;
    assert_eq!(cs["kind"], "instance");
    assert_eq!(cs["implementation"]["url"], format!("{PUBLIC_URL}/fhir"));
    assert_eq!(cs["rest"][0]["security"]["cors"], true);
    // The record types; the audit trail (AuditEvent) is read-only and not versioned.
    let resources = cs["rest"][0]["resource"].as_array().unwrap();
    let audit = resources
        .iter()
        .find(|r| r["type"] == "AuditEvent")
        .unwrap();
    assert_eq!(
        audit["interaction"],
        json!([{ "code": "read" }, { "code": "search-type" }])
    );
    for r in resources.iter().filter(|r| r["type"] != "AuditEvent") {
        assert_eq!(r["conditionalCreate"], true, "{r}");
        assert_eq!(r["versioning"], "versioned", "{r}");
    }
}

#[tokio::test]
async fn smart_discovery_comes_from_the_configured_provider_and_the_capability_statement_points_at_it()
 {
    let w = World::new().await;
    let issuer = w.idp.issuer();
    for path in [
        "/fhir/.well-known/smart-configuration",
        "/.well-known/smart-configuration",
    ] {
        let res = w.app.get(path).await;
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        let c = json_of(res).await;
        assert_eq!(c["issuer"], issuer.as_str());
        assert_eq!(c["authorization_endpoint"], format!("{issuer}/authorize"));
        assert_eq!(c["token_endpoint"], format!("{issuer}/token"));
        assert_eq!(c["jwks_uri"], format!("{issuer}/jwks"));
        // Only what is true: no implicit grant, no `plain` PKCE, no launch context.
        assert_eq!(
            c["grant_types_supported"],
            json!(["authorization_code", "client_credentials"])
        );
        assert_eq!(c["code_challenge_methods_supported"], json!(["S256"]));
        let caps: Vec<&str> = c["capabilities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        for cap in [
            "launch-standalone",
            "client-public",
            "client-confidential-symmetric",
            "sso-openid-connect",
            "permission-v2",
        ] {
            assert!(caps.contains(&cap), "{cap}: {caps:?}");
        }
        assert!(
            !caps
                .iter()
                .any(|c| c.starts_with("context-") || *c == "launch-ehr"),
            "{caps:?}"
        );
        let scopes = c["scopes_supported"].as_array().unwrap();
        for s in [
            "user/Patient.rs",
            "patient/Observation.rs",
            "system/Claim.cruds",
            "billing.read",
        ] {
            assert!(scopes.contains(&json!(s)), "{s}");
        }
    }
    let cs = json_of(w.app.get("/fhir/metadata").await).await;
    let security = &cs["rest"][0]["security"];
    let codes: Vec<&str> = security["service"][0]["coding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, vec!["OAuth", "SMART-on-FHIR"]);
    assert_eq!(
        security["extension"][0]["url"],
        "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
    );
    assert_eq!(
        security["extension"][0]["extension"],
        json!([
            { "url": "authorize", "valueUri": format!("{issuer}/authorize") },
            { "url": "token", "valueUri": format!("{issuer}/token") },
        ])
    );

    // A provider unreachable before its first fetch: 503 for the discovery document, and
    // the CapabilityStatement claims no SMART launch (it stays up).
    let down = World::new().await;
    down.idp.set_down(true);
    let res = down.app.get("/.well-known/smart-configuration").await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let cs = json_of(down.app.get("/fhir/metadata").await).await;
    assert_eq!(
        cs["rest"][0]["security"]["service"][0]["coding"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(cs["rest"][0]["security"].get("extension").is_none());
}

#[tokio::test]
async fn without_bearer_authentication_there_is_no_smart_discovery_and_no_smart_claim() {
    let app = crate::support::TestApp::spawn().await;
    let res = app.get("/fhir/.well-known/smart-configuration").await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let cs = json_of(app.get("/fhir/metadata").await).await;
    let codes = &cs["rest"][0]["security"]["service"][0]["coding"];
    assert_eq!(codes.as_array().unwrap().len(), 1);
    assert_eq!(codes[0]["code"], "OAuth");
}

#[tokio::test]
async fn date_prefixes_or_lists_and_system_tokens_search_as_fhir_defines() {
    let w = World::new().await;
    let (_, doc) = w.user("dr-a", &[Role::Clinician]);
    let token = w.token(
        "dr-a",
        "user/Patient.cruds user/Observation.cruds user/Claim.cruds",
    );
    let patient = w.create(&doc, &patient_json("MRN-D1", "Dated")).await;
    for (day, code) in [("18", "8867-4"), ("20", "8867-4"), ("22", "8310-5")] {
        let mut o = observation_json(patient);
        o["effectiveDateTime"] = json!(format!("2026-11-{day}T08:30:00Z"));
        o["code"]["coding"][0]["code"] = json!(code);
        let res = w
            .send(Method::POST, "/fhir/Observation", &token, Some(&o))
            .await;
        assert_eq!(res.status(), StatusCode::CREATED);
    }
    let days = |b: &Value| -> Vec<String> {
        let mut d: Vec<String> = b["entry"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|e| e["resource"]["effectiveDateTime"].as_str().unwrap()[8..10].to_string())
            .collect();
        d.sort();
        d
    };
    for (q, want) in [
        ("date=2026-11-20", &["20"][..]),
        ("date=eq2026-11-20", &["20"]),
        ("date=ne2026-11-20", &["18", "22"]),
        ("date=gt2026-11-20", &["22"]),
        ("date=sa2026-11-20", &["22"]),
        ("date=lt2026-11-20", &["18"]),
        ("date=eb2026-11-20", &["18"]),
        ("date=ge2026-11-20", &["20", "22"]),
        ("date=le2026-11-20", &["18", "20"]),
        ("date=gt2026-11-20T08:30:00Z", &["22"]),
        ("date=ge2026-11-20T08:30:00Z", &["20", "22"]),
        ("date=2026-11", &["18", "20", "22"]),
        ("date=2026", &["18", "20", "22"]),
        ("date=2026-10", &[]),
        ("date=2026-11-18,2026-11-22", &["18", "22"]),
        ("date=ge2026-11-19&date=le2026-11-21", &["20"]),
        ("code=8310-5,8867-4", &["18", "20", "22"]),
        ("code=http://loinc.org|8310-5", &["22"]),
        ("code=8867-4&date=gt2026-11-19", &["20"]),
    ] {
        let res = w
            .get(&format!("/fhir/Observation?patient={patient}&{q}"), &token)
            .await;
        assert_eq!(res.status(), StatusCode::OK, "{q}");
        assert_eq!(days(&json_of(res).await), want, "{q}");
    }
    let ap = json_of(
        w.get(
            &format!("/fhir/Observation?patient={patient}&date=ap2026-11-20"),
            &token,
        )
        .await,
    )
    .await;
    assert!(days(&ap).contains(&"20".to_string()));
    for bad in [
        "date=xx2026-11-20",
        "date=2026-13",
        "date=2026-11-20,",
        "code=8867-4,,8310-5",
        "date=1,2,3,4,5,6,7,8,9,10,11",
    ] {
        let res = w
            .get(
                &format!("/fhir/Observation?patient={patient}&{bad}"),
                &token,
            )
            .await;
        assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }
    // Birth dates are sealed: exact days only (eq accepted), other prefixes refused.
    let res = w.get("/fhir/Patient?birthdate=eq1970-03-04", &doc).await;
    assert_eq!(json_of(res).await["entry"].as_array().unwrap().len(), 1);
    let res = w.get("/fhir/Patient?birthdate=gt1970-03-04", &doc).await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);

    // Claim status: an OR list, with or without its system.
    w.user("billing-1", &[Role::Billing]);
    let billing_token = w.token("billing-1", "user/Patient.rs user/Claim.cruds");
    let claim = crate::api::resources::claim_json(patient);
    let res = w
        .send(Method::POST, "/fhir/Claim", &billing_token, Some(&claim))
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    for (q, n) in [
        ("status=draft,active", 1),
        ("status=http://hl7.org/fhir/fm-status|active", 1),
        ("status=draft,cancelled", 0),
    ] {
        let b = json_of(
            w.get(&format!("/fhir/Claim?{q}&_total=accurate"), &billing_token)
                .await,
        )
        .await;
        assert_eq!(b["total"], n, "{q}");
    }
    // `_summary=true`: the R4 summary elements (a Claim's items are not), tagged SUBSETTED.
    let b = json_of(w.get("/fhir/Claim?_summary=true", &billing_token).await).await;
    let c = &b["entry"][0]["resource"];
    assert!(c.get("item").is_none(), "{c}");
    assert!(c["total"].is_object() && c["insurance"].is_array(), "{c}");
    assert_eq!(c["meta"]["tag"][0]["code"], "SUBSETTED");
    let res = w
        .get("/fhir/Claim?_summary=true&_elements=status", &billing_token)
        .await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn search_by_post_keeps_parameter_values_out_of_every_url() {
    let w = World::new().await;
    let (_, doc) = w.user("dr-a", &[Role::Clinician]);
    let (_, other) = w.user("dr-b", &[Role::Clinician]);
    for i in 0..3 {
        w.create(&doc, &patient_json(&format!("MRN-P{i}"), "Postman"))
            .await;
    }
    let post = |token: &str, body: &'static str, content_type: &'static str| {
        w.app
            .client
            .post(w.app.url("/fhir/Patient/_search"))
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let form = "application/x-www-form-urlencoded";
    let res = post(&doc, "family=postman&_count=2&_total=accurate", form)
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let b = json_of(res).await;
    assert_eq!(b["total"], 3);
    assert_eq!(b["entry"].as_array().unwrap().len(), 2);
    assert_eq!(
        b["link"][0]["url"],
        format!("{PUBLIC_URL}/fhir/Patient/_search")
    );
    let next = next_link(&b).unwrap();
    assert!(
        next.starts_with(&format!("{PUBLIC_URL}/fhir/Patient?_cursor=")),
        "{next}"
    );
    assert!(
        !next.to_lowercase().contains("postman") && !next.contains("family"),
        "{next}"
    );
    let last = w.audit_events().pop().unwrap();
    assert_eq!((last.0.as_str(), last.1.as_str()), ("search", "permit"));
    assert_eq!(last.2.len(), 2);

    // The next page (a GET with the sealed cursor alone) continues the same search.
    let page2 = json_of(w.get(&next, &doc).await).await;
    assert_eq!(page2["entry"].as_array().unwrap().len(), 1);
    assert_eq!(page2["total"], 3);
    assert!(next_link(&page2).is_none());
    // Nobody else can use it, and it takes no other parameter.
    let res = w.get(&next, &other).await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let res = w.get(&format!("{next}&family=other"), &doc).await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);

    // Only a form body; unknown parameters follow the same rules as GET.
    let res = post(&doc, "{\"family\":\"postman\"}", "application/json")
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let res = post(&doc, "nickname=x", form).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    // Scoped like any search: dr-b finds none of dr-a's patients.
    let res = post(&other, "family=postman&_total=accurate", form)
        .await
        .unwrap();
    let b = json_of(res).await;
    assert_eq!(b["total"], 0);
    assert!(b.get("entry").is_none());
}

#[tokio::test]
async fn versions_are_kept_sealed_read_back_in_the_callers_view_and_deleted_records_are_gone() {
    let w = World::new().await;
    let (_, doc) = w.user("dr-a", &[Role::Clinician]);
    let (_, stranger) = w.user("dr-b", &[Role::Clinician]);
    w.user("billing-1", &[Role::Billing]);
    let billing = w.token("billing-1", "user/Patient.rs");
    let id = w.create(&doc, &patient_json("MRN-H1", "Historia")).await;
    let path = format!("/fhir/Patient/{id}");
    for family in ["Historib", "Historic"] {
        let mut body = patient_json("MRN-H1", family);
        body["id"] = json!(id.to_string());
        let res = w.send(Method::PUT, &path, &doc, Some(&body)).await;
        assert_eq!(res.status(), StatusCode::OK);
    }
    // The current read carries ETag and Last-Modified; Location named an existing version.
    let res = w.get(&path, &doc).await;
    assert_eq!(res.headers()["etag"], "W/\"3\"");
    assert!(res.headers().contains_key("last-modified"));

    // vread: each version, in the caller's view, audited as a read of the record.
    let v1 = w.get(&format!("{path}/_history/1"), &doc).await;
    assert_eq!(v1.status(), StatusCode::OK);
    assert_eq!(v1.headers()["etag"], "W/\"1\"");
    assert!(v1.headers().contains_key("last-modified"));
    let v1 = json_of(v1).await;
    assert_eq!(v1["name"][0]["family"], "Historia");
    assert_eq!(v1["meta"]["versionId"], "1");
    assert_eq!(v1["telecom"][0]["value"], "555-0100");
    let last = w.audit_events().pop().unwrap();
    assert_eq!(
        (last.0.as_str(), last.1.as_str(), last.2.clone()),
        ("read", "permit", vec![id])
    );
    // Billing's view has no telecom: the old version is shaped like the current one.
    let b1 = json_of(w.get(&format!("{path}/_history/1"), &billing).await).await;
    assert_eq!(b1["name"][0]["family"], "Historia");
    assert!(b1.get("telecom").is_none(), "{b1}");
    // Elements narrow a version too.
    let e1 = json_of(
        w.get(&format!("{path}/_history/2?_elements=gender"), &doc)
            .await,
    )
    .await;
    assert!(e1.get("name").is_none());
    for missing in ["9", "0", "x"] {
        let res = w.get(&format!("{path}/_history/{missing}"), &doc).await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{missing}");
    }
    // No relationship, for history and versions alike: a clinician is refused as on a
    // read (403 naming `$break-glass`, issue 13), with nothing of the record.
    for p in [format!("{path}/_history"), format!("{path}/_history/1")] {
        let res = w.get(&p, &stranger).await;
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "{p}");
        let text = res.text().await.unwrap();
        assert!(text.contains("$break-glass"), "{text}");
        assert!(!text.contains("Histori"));
    }

    // The instance history: newest first, absolute URLs, request and response of each.
    let h = json_of(w.get(&format!("{path}/_history"), &doc).await).await;
    assert_eq!(h["type"], "history");
    assert_eq!(h["total"], 3);
    let entries = h["entry"].as_array().unwrap();
    let versions: Vec<&str> = entries
        .iter()
        .map(|e| e["resource"]["meta"]["versionId"].as_str().unwrap())
        .collect();
    assert_eq!(versions, vec!["3", "2", "1"]);
    assert_eq!(
        entries[2]["request"],
        json!({ "method": "POST", "url": "Patient" })
    );
    assert_eq!(entries[0]["request"]["method"], "PUT");
    assert_eq!(
        entries[0]["fullUrl"],
        format!("{PUBLIC_URL}/fhir/Patient/{id}")
    );
    assert_eq!(entries[0]["response"]["etag"], "W/\"3\"");

    // Sealed at rest: no name of any version in clear in the history table.
    {
        use diesel::prelude::*;
        #[derive(QueryableByName)]
        struct Dump {
            #[diesel(sql_type = diesel::sql_types::Text)]
            t: String,
        }
        let dump: Vec<Dump> = diesel::sql_query(
            "SELECT encode(body_sealed, 'escape') || resource_type AS t FROM resource_history",
        )
        .load(&mut w.app.db.conn())
        .unwrap();
        assert_eq!(dump.len(), 3);
        assert!(
            dump.iter()
                .all(|d| !d.t.contains("Histori") && !d.t.contains("555-0100"))
        );
    }

    // A deleted record: 410 for whoever could read it, 404 for anyone else; its history
    // ends with the deletion, a version without a body.
    let token = w.token("dr-a", SCOPES);
    let res = w
        .send(
            Method::POST,
            "/fhir/Observation",
            &token,
            Some(&observation_json(id)),
        )
        .await;
    let obs = json_of(res).await;
    let obs_path = format!("/fhir/Observation/{}", obs["id"].as_str().unwrap());
    let res = w.send(Method::DELETE, &obs_path, &token, None).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let res = w.get(&obs_path, &token).await;
    assert_eq!(res.status(), StatusCode::GONE);
    assert_eq!(json_of(res).await["resourceType"], "OperationOutcome");
    // A clinician without a relationship learns nothing of the deletion: refused as on
    // any record of the patient (403 naming `$break-glass`, issue 13), not 410.
    let res = w.get(&obs_path, &w.token("dr-b", SCOPES)).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert!(res.text().await.unwrap().contains("$break-glass"));
    assert_eq!(
        w.get(&format!("{obs_path}/_history/1"), &token)
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        w.get(&format!("{obs_path}/_history/2"), &token)
            .await
            .status(),
        StatusCode::GONE
    );
    let h = json_of(w.get(&format!("{obs_path}/_history"), &token).await).await;
    assert_eq!(h["total"], 2);
    assert_eq!(h["entry"][0]["request"]["method"], "DELETE");
    assert!(h["entry"][0].get("resource").is_none());
    assert_eq!(h["entry"][1]["resource"]["status"], "final");
}

#[tokio::test]
async fn json_patch_updates_only_what_the_role_may_write_and_keeps_the_rest() {
    let w = World::new().await;
    let (_, doc) = w.user("dr-a", &[Role::Clinician]);
    w.user("billing-1", &[Role::Billing]);
    let billing = w.token("billing-1", "user/Patient.rs");
    let id = w.create(&doc, &patient_json("MRN-J1", "Patchy")).await;
    let path = format!("/fhir/Patient/{id}");
    let patch =
        |token: &str, ops: Value, content_type: &'static str, if_match: Option<&'static str>| {
            let mut req = w
                .app
                .client
                .patch(w.app.url(&path))
                .header("authorization", format!("Bearer {token}"))
                .header("content-type", content_type)
                .body(ops.to_string());
            if let Some(v) = if_match {
                req = req.header("if-match", v);
            }
            req.send()
        };
    let jp = "application/json-patch+json";
    let version = || {
        use custodian::db::schema::patients::dsl::*;
        use diesel::prelude::*;
        patients
            .find(id)
            .select(version)
            .first::<i32>(&mut w.app.db.conn())
            .unwrap()
    };

    let res = patch(
        &doc,
        json!([
            { "op": "test", "path": "/name/0/family", "value": "Patchy" },
            { "op": "replace", "path": "/name/0/family", "value": "Patched" },
            { "op": "add", "path": "/telecom/-", "value": { "system": "email", "value": "p@example.org" } },
        ]),
        jp,
        None,
    )
    .await
    .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let p = json_of(res).await;
    assert_eq!(p["name"][0]["family"], "Patched");
    assert_eq!(p["telecom"].as_array().unwrap().len(), 2);
    assert_eq!(p["meta"]["versionId"], "2");
    let last = w.audit_events().pop().unwrap();
    assert_eq!((last.0.as_str(), last.1.as_str()), ("update", "permit"));
    // The SSN the clinician cannot see was kept.
    let b = json_of(w.get(&path, &billing).await).await;
    assert!(
        b["identifier"]
            .to_string()
            .contains(crate::support::world::SSN),
        "{b}"
    );
    assert_eq!(b["name"][0]["family"], "Patched");
    // And the version is in the history.
    let h = json_of(w.get(&format!("{path}/_history"), &doc).await).await;
    assert_eq!(h["total"], 2);

    // Writing a field outside the view: 403 naming it, nothing stored.
    let ssn = json!([{ "op": "add", "path": "/identifier/-",
        "value": { "system": "http://hl7.org/fhir/sid/us-ssn", "value": "123-45-6780" } }]);
    let res = patch(&doc, ssn, jp, None).await.unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert!(json_of(res).await.to_string().contains("SSN"));
    assert_eq!(version(), 2);
    // A patch that leaves an invalid resource, a failed test, a bad op: 422, nothing stored.
    for ops in [
        json!([{ "op": "remove", "path": "/gender" }]),
        json!([{ "op": "test", "path": "/gender", "value": "male" }]),
        json!([{ "op": "remove", "path": "/nothing" }]),
        json!([{ "op": "replace", "path": "/id", "value": "00000000-0000-4000-8000-000000000000" }]),
    ] {
        let res = patch(&doc, ops.clone(), jp, None).await.unwrap();
        assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY, "{ops}");
        assert_eq!(json_of(res).await["resourceType"], "OperationOutcome");
    }
    assert_eq!(version(), 2);
    // A stale If-Match: 412; another media type: 415; a role that may not update: 403.
    let ok = json!([{ "op": "replace", "path": "/gender", "value": "other" }]);
    let res = patch(&doc, ok.clone(), jp, Some("W/\"1\"")).await.unwrap();
    assert_eq!(res.status(), StatusCode::PRECONDITION_FAILED);
    let res = patch(&doc, ok.clone(), "application/fhir+json", None)
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let res = patch(&billing, ok.clone(), jp, None).await.unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(version(), 2);
    let res = patch(&doc, ok, jp, Some("W/\"2\"")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(version(), 3);

    // Every type with an update: an Observation's status.
    let token = w.token("dr-a", SCOPES);
    let obs = json_of(
        w.send(
            Method::POST,
            "/fhir/Observation",
            &token,
            Some(&observation_json(id)),
        )
        .await,
    )
    .await;
    let res = w
        .app
        .client
        .patch(w.app.url(&format!(
            "/fhir/Observation/{}",
            obs["id"].as_str().unwrap()
        )))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", jp)
        .body(json!([{ "op": "replace", "path": "/status", "value": "amended" }]).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(json_of(res).await["status"], "amended");
}

#[tokio::test]
async fn include_adds_only_patients_the_caller_could_read_directly_in_that_reads_view() {
    let w = World::new().await;
    let (_, doc) = w.user("dr-a", &[Role::Clinician]);
    let token = w.token("dr-a", SCOPES);
    let patient = w.create(&doc, &patient_json("MRN-I1", "Included")).await;
    for _ in 0..2 {
        let res = w
            .send(
                Method::POST,
                "/fhir/Observation",
                &token,
                Some(&observation_json(patient)),
            )
            .await;
        assert_eq!(res.status(), StatusCode::CREATED);
    }
    let q = format!("/fhir/Observation?patient={patient}&_include=Observation:patient");
    let b = json_of(w.get(&q, &token).await).await;
    let entries = b["entry"].as_array().unwrap();
    let modes: Vec<&str> = entries
        .iter()
        .map(|e| e["search"]["mode"].as_str().unwrap())
        .collect();
    assert_eq!(modes, vec!["match", "match", "include"]);
    let included = &entries[2];
    assert_eq!(
        included["fullUrl"],
        format!("{PUBLIC_URL}/fhir/Patient/{patient}")
    );
    assert_eq!(included["resource"]["name"][0]["family"], "Included");
    // The clinician's Patient view: no SSN.
    assert!(
        !included["resource"]
            .to_string()
            .contains(crate::support::world::SSN)
    );
    let last = w.audit_events().pop().unwrap();
    assert_eq!(
        (last.0.as_str(), last.1.as_str(), last.2.clone()),
        ("search", "permit", vec![patient])
    );
    // `subject` and the `:Patient` target name the same.
    let b2 = json_of(
        w.get(
            &format!("/fhir/Observation?patient={patient}&_include=Observation:subject:Patient"),
            &token,
        )
        .await,
    )
    .await;
    assert_eq!(b2["entry"].as_array().unwrap().len(), 3);

    // A token that may not read Patients: the matches, and no Patient.
    let obs_only = w.token("dr-a", "user/Observation.rs");
    let b = json_of(w.get(&q, &obs_only).await).await;
    let entries = b["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{b}");
    assert!(entries.iter().all(|e| e["search"]["mode"] == "match"));
    assert!(!b.to_string().contains("Included"));

    // Billing includes the Patient of its claims in the billing view (with the SSN).
    w.user("billing-1", &[Role::Billing]);
    let billing = w.token("billing-1", "user/Patient.rs user/Claim.cruds");
    let claim = crate::api::resources::claim_json(patient);
    let res = w
        .send(Method::POST, "/fhir/Claim", &billing, Some(&claim))
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let b = json_of(w.get("/fhir/Claim?_include=Claim:patient", &billing).await).await;
    let inc = &b["entry"][1]["resource"];
    assert_eq!(inc["resourceType"], "Patient");
    assert!(
        inc.to_string().contains(crate::support::world::SSN),
        "{inc}"
    );

    for bad in [
        "/fhir/Observation?_include=Observation:performer",
        "/fhir/Observation?_include=*",
        "/fhir/Observation?_include=Claim:patient",
        "/fhir/Patient?_include=Patient:organization",
    ] {
        let res = w.get(bad, &token).await;
        assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }
    let cs = json_of(w.app.get("/fhir/metadata").await).await;
    assert_eq!(
        cs["rest"][0]["resource"][1]["searchInclude"],
        json!(["Observation:patient", "Observation:subject"])
    );
}

#[tokio::test]
async fn patient_everything_pages_over_every_type_the_caller_may_see() {
    let w = World::new().await;
    let (_, doc) = w.user("dr-a", &[Role::Clinician]);
    let (_, stranger) = w.user("dr-b", &[Role::Clinician]);
    let token = w.token(
        "dr-a",
        "user/Patient.cruds user/Observation.cruds user/DocumentReference.cruds",
    );
    let patient = w.create(&doc, &patient_json("MRN-V1", "Everyone")).await;
    for _ in 0..2 {
        let res = w
            .send(
                Method::POST,
                "/fhir/Observation",
                &token,
                Some(&observation_json(patient)),
            )
            .await;
        assert_eq!(res.status(), StatusCode::CREATED);
    }
    let note = crate::api::resources::note_json(patient, "Everything note.");
    let res = w
        .send(Method::POST, "/fhir/DocumentReference", &token, Some(&note))
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    w.user("billing-1", &[Role::Billing]);
    let billing = w.token("billing-1", "user/Patient.rs user/Claim.cruds");
    let claim = crate::api::resources::claim_json(patient);
    let res = w
        .send(Method::POST, "/fhir/Claim", &billing, Some(&claim))
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);

    // The clinician: the Patient, its observations and note, paged; no claims (the
    // clinician may not search claims).
    let before = w.audit_events().len();
    let mut url = Some(format!("/fhir/Patient/{patient}/$everything?_count=2"));
    let mut kinds = Vec::new();
    let mut pages = 0;
    while let Some(u) = url.take() {
        let res = w.get(&u, &token).await;
        assert_eq!(res.status(), StatusCode::OK, "{u}");
        let b = json_of(res).await;
        for e in b["entry"].as_array().unwrap() {
            let kind = e["resource"]["resourceType"].as_str().unwrap().to_string();
            assert_eq!(
                e["fullUrl"],
                format!(
                    "{PUBLIC_URL}/fhir/{kind}/{}",
                    e["resource"]["id"].as_str().unwrap()
                )
            );
            kinds.push(kind);
        }
        url = next_link(&b);
        if let Some(n) = &url {
            assert!(n.starts_with(&format!("{PUBLIC_URL}/fhir/Patient/{patient}/$everything?")));
        }
        pages += 1;
    }
    assert_eq!(pages, 2);
    assert_eq!(
        kinds,
        vec!["Patient", "Observation", "Observation", "DocumentReference"]
    );
    // One access per resource type on each page, each naming the patient.
    let events: Vec<_> = w.audit_events().into_iter().skip(before).collect();
    assert_eq!(events.len(), 4, "{events:?}");
    assert!(
        events
            .iter()
            .all(|e| e.1 == "permit" && e.2 == vec![patient])
    );

    // Billing: the Patient (its view) and the claim, no observations.
    let b = json_of(
        w.get(&format!("/fhir/Patient/{patient}/$everything"), &billing)
            .await,
    )
    .await;
    let kinds: Vec<&str> = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["resourceType"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, vec!["Patient", "Claim"]);

    // No relationship: a clinician is refused as on a read (403 naming `$break-glass`,
    // issue 13); a cursor of another patient: 422.
    let res = w
        .get(&format!("/fhir/Patient/{patient}/$everything"), &stranger)
        .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert!(res.text().await.unwrap().contains("$break-glass"));
    let first = json_of(
        w.get(
            &format!("/fhir/Patient/{patient}/$everything?_count=1"),
            &token,
        )
        .await,
    )
    .await;
    let next = next_link(&first).unwrap();
    let other = w.create(&doc, &patient_json("MRN-V2", "Otherone")).await;
    let moved = next.replace(&patient.to_string(), &other.to_string());
    assert_eq!(
        w.get(&moved, &token).await.status(),
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let cs = json_of(w.app.get("/fhir/metadata").await).await;
    assert_eq!(
        cs["rest"][0]["resource"][0]["operation"][0]["name"],
        "everything"
    );
}

// ---------------------------------------------------------------------------------------
// A stock client and an independent validator (npm, pinned by tests/fhir-clients).

pub(crate) fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fhir-clients")
}

/// Installs `tests/fhir-clients/node_modules` once (per machine, under a lock).
pub(crate) fn ensure_installed() {
    crate::support::node::ensure_installed(&clients_dir());
}

#[tokio::test]
async fn a_stock_fhir_client_reads_pages_creates_and_updates_and_every_response_is_valid_r4() {
    ensure_installed();
    // The client follows the absolute links the server gives, so the public URL must be
    // this very server.
    let port = free_port();
    let w = World::with(|b, _| {
        b.set("server.listen", format!("127.0.0.1:{port}"))
            .set("server.public_url", format!("https://localhost:{port}"))
    })
    .await;
    let (_, doc) = w.user("dr-interop", &[Role::Clinician]);
    // A privacy officer reads the trail of the run as AuditEvent resources.
    w.user("po-interop", &[Role::PrivacyOfficer]);
    let po = w.token("po-interop", "audit.read");
    let records = w.token(
        "dr-interop",
        "user/Patient.rs user/Observation.cruds user/DocumentReference.cruds",
    );
    w.user("billing-interop", &[Role::Billing]);
    let billing = w.token("billing-interop", "user/Patient.rs user/Claim.cruds");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(clients_dir().join("interop.mjs"))
            .current_dir(clients_dir())
            .env("NODE_EXTRA_CA_CERTS", &test_cert().cert)
            .env(
                "CUSTODIAN_FHIR_BASE",
                format!("https://localhost:{port}/fhir"),
            )
            .env("CUSTODIAN_TOKEN", doc)
            .env("CUSTODIAN_AUDIT_TOKEN", po)
            .env("CUSTODIAN_RECORDS_TOKEN", records)
            .env("CUSTODIAN_BILLING_TOKEN", billing)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    for step in [
        "capabilities",
        "create",
        "read",
        "search",
        "empty and count",
        "conditional create",
        "update",
        "history",
        "everything",
        "audit events",
        "sort",
        "string search",
        "revinclude",
        "record types",
        "done",
    ] {
        assert!(
            stdout.contains(&format!("{{\"step\":\"{step}\"")),
            "{step} missing:\n{stdout}"
        );
    }
}
