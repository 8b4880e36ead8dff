//! String search on sealed names (issue 16): starts-with through the blind indexes of name
//! prefixes, `:exact` through the equality index, `:contains` refused; the prefix indexes
//! are keyed tags (no plaintext prefix in the database) and rows written before them are
//! indexed by `custodian keys index-names`.

use crate::support::world::{World, patient_json};
use custodian::crypto::BlindKind;
use custodian::policy::Role;
use diesel::prelude::*;
use reqwest::StatusCode;
use serde_json::Value;
use uuid::Uuid;

async fn ids(w: &World, query: &str, token: &str) -> Vec<Uuid> {
    let res = w.get(&format!("/fhir/Patient?{query}"), token).await;
    assert_eq!(res.status(), StatusCode::OK, "{query}");
    let b: Value = res.json().await.unwrap();
    let mut out: Vec<Uuid> = b["entry"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| e["resource"]["id"].as_str().unwrap().parse().unwrap())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn sorted(mut v: Vec<Uuid>) -> Vec<Uuid> {
    v.sort();
    v
}

async fn refused(w: &World, query: &str, token: &str) -> (StatusCode, String) {
    let res = w.get(&format!("/fhir/Patient?{query}"), token).await;
    let status = res.status();
    let body = res.text().await.unwrap();
    let outcome: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(outcome["resourceType"], "OperationOutcome", "{query}");
    (status, body)
}

#[tokio::test]
async fn names_match_by_their_beginning_exactly_with_exact_and_never_by_contains() {
    let w = World::new().await;
    let (_, doc) = w.user("dr-a", &[Role::Clinician]);
    let smithson = w.create(&doc, &patient_json("MRN-N1", "Smithson")).await;
    let smythe = w.create(&doc, &patient_json("MRN-N2", "Smythe")).await;
    let blacksmith = w.create(&doc, &patient_json("MRN-N3", "Blacksmith")).await;
    let double = w.create(&doc, &patient_json("MRN-N4", "Lane Smith")).await;

    // Starts-with, case- and whitespace-insensitive, at the start of any word.
    assert_eq!(
        ids(&w, "family=Smi", &doc).await,
        sorted(vec![smithson, double])
    );
    assert_eq!(ids(&w, "family=SMITHS", &doc).await, vec![smithson]);
    assert_eq!(ids(&w, "family=smithson", &doc).await, vec![smithson]);
    assert_eq!(ids(&w, "family=lane%20%20s", &doc).await, vec![double]);
    assert_eq!(ids(&w, "family=smy", &doc).await, vec![smythe]);
    // Near misses: one letter off, the middle of a word, a longer name, another field.
    assert!(ids(&w, "family=Smx", &doc).await.is_empty());
    assert!(ids(&w, "family=mith", &doc).await.is_empty());
    assert!(ids(&w, "family=Smithsons", &doc).await.is_empty());
    assert!(ids(&w, "family=Ave", &doc).await.is_empty());
    // Given names: every given name is a word start ("Avery Quinn").
    assert_eq!(
        ids(&w, "given=qui&family=bla", &doc).await,
        vec![blacksmith]
    );
    assert_eq!(ids(&w, "given=Avery", &doc).await.len(), 4);

    // `:exact`: the whole name (case- and whitespace-insensitive), never a prefix.
    assert_eq!(ids(&w, "family:exact=smithson", &doc).await, vec![smithson]);
    assert!(ids(&w, "family:exact=Smith", &doc).await.is_empty());
    assert_eq!(ids(&w, "given:exact=avery%20quinn", &doc).await.len(), 4);

    // Too short: a fixed 400 that repeats nothing of the value.
    for q in ["family=Sm", "family=%20s%20", "given=Av"] {
        let (status, body) = refused(&w, q, &doc).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{q}");
        assert!(body.contains("needs 3 to 40 characters"), "{q}: {body}");
        assert!(!body.contains("Sm\""), "{q}");
    }
    let long = "a".repeat(41);
    let (status, _) = refused(&w, &format!("family={long}"), &doc).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // `:contains` is not offered: a 400 naming the modifier, also when lenient.
    let (status, body) = refused(&w, "family:contains=mith", &doc).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains(":contains is not supported"), "{body}");
    assert!(!body.contains("mith\""), "{body}");
    let res = w
        .app
        .client
        .get(w.app.url("/fhir/Patient?given:contains=ver"))
        .header("authorization", format!("Bearer {doc}"))
        .header("prefer", "handling=lenient")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let (status, _) = refused(&w, "family:below=smi", &doc).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Both forms of one parameter at once: refused.
    let (status, _) = refused(&w, "family=smi&family:exact=smithson", &doc).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    // The CapabilityStatement says what a string search does, and claims no :contains.
    let cap: Value = w.get("/fhir/metadata", &doc).await.json().await.unwrap();
    let family = cap["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "Patient")
        .unwrap()["searchParam"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "family")
        .unwrap()["documentation"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(family.contains("Starts-with"), "{family}");
    assert!(family.contains(":contains is not supported"), "{family}");
}

#[derive(QueryableByName)]
struct Stored {
    #[diesel(sql_type = diesel::sql_types::Text)]
    json: String,
    #[diesel(sql_type = diesel::sql_types::Array<diesel::sql_types::Bytea>)]
    prefixes: Vec<Vec<u8>>,
}

#[tokio::test]
async fn prefix_indexes_are_keyed_tags_and_old_rows_are_indexed_by_the_backfill() {
    let w = World::new().await;
    let (_, doc) = w.user("dr-a", &[Role::Clinician]);
    let id = w.create(&doc, &patient_json("MRN-P1", "Harrowgate")).await;

    // Every stored prefix is a 32-byte keyed tag; no prefix of the name is stored in
    // clear (neither as text nor as bytes), and the tags are those of the blind-index key.
    let stored: Stored = diesel::sql_query(
        "SELECT row_to_json(p)::text AS json, name_prefixes AS prefixes FROM patients p WHERE id = $1",
    )
    .bind::<diesel::sql_types::Uuid, _>(id)
    .get_result(&mut w.app.db.conn())
    .unwrap();
    assert!(!stored.prefixes.is_empty());
    assert!(stored.prefixes.iter().all(|t| t.len() == 32));
    let hex = |s: &str| s.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    for plain in [
        "har",
        "harr",
        "harrowgate",
        "Harrowgate",
        "ave",
        "avery",
        "qui",
    ] {
        assert!(!stored.json.contains(plain), "{plain} in clear");
        assert!(!stored.json.contains(&hex(plain)), "{plain} as bytes");
        assert!(
            !stored
                .prefixes
                .iter()
                .any(|t| t.as_slice() == plain.as_bytes())
        );
    }
    for q in ["har", "harrowgate"] {
        let tag = w.keyring.prefix_query(BlindKind::FamilyPrefix, q).unwrap();
        assert!(stored.prefixes.contains(&tag), "{q}");
    }

    // A row written before the prefix indexes existed (as after the migration) is not
    // found by starts-with until `custodian keys index-names` computes them; the backfill
    // changes neither the content nor the version.
    let mut conn = w.app.db.conn();
    diesel::sql_query("UPDATE patients SET name_prefixes = NULL")
        .execute(&mut conn)
        .unwrap();
    assert!(ids(&w, "family=harrow", &doc).await.is_empty());
    assert_eq!(ids(&w, "family:exact=harrowgate", &doc).await, vec![id]);
    let n = custodian::db::patients::index_name_prefixes(&mut conn, &w.keyring).unwrap();
    assert_eq!(n, 1);
    assert_eq!(
        custodian::db::patients::index_name_prefixes(&mut conn, &w.keyring).unwrap(),
        0,
        "nothing left"
    );
    assert_eq!(ids(&w, "family=harrow", &doc).await, vec![id]);
    let res = w.get(&format!("/fhir/Patient/{id}"), &doc).await;
    assert_eq!(res.headers()["etag"], "W/\"1\"");
}
