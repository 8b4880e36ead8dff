//! String search on sealed names (issue 16): starts-with through the blind indexes of name
//! prefixes, `:exact` through the equality index, `:contains` through the blind indexes
//! of every substring of each name word; the prefix and infix indexes are keyed tags (no
//! plaintext in the database) and rows written before them are indexed by
//! `custodian keys index-names`.

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
async fn names_match_by_their_beginning_and_exactly_with_exact() {
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

    // Comma-separated values are an OR, for starts-with and :exact alike (`\,` is a
    // literal comma, which no stored name has).
    assert_eq!(
        ids(&w, "family=smy,bla", &doc).await,
        sorted(vec![smythe, blacksmith])
    );
    assert_eq!(
        ids(&w, "family:exact=smythe,SMITHSON,nobody", &doc).await,
        sorted(vec![smythe, smithson])
    );
    assert!(ids(&w, "family=smy\\,bla", &doc).await.is_empty());
    let (status, _) = refused(&w, "family=smy,b", &doc).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

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

    // A modifier we do not offer: a 400, also when lenient (ignoring it would answer
    // another question).
    let res = w
        .app
        .client
        .get(w.app.url("/fhir/Patient?given:text=ver"))
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

    // The CapabilityStatement says what a string search does.
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
    assert!(family.contains(":contains matches 3 to 40"), "{family}");
}

/// The ids of every page of `query` (following the `next` links), in page order.
async fn paged(w: &World, query: &str, token: &str) -> Vec<Uuid> {
    let mut out = Vec::new();
    let mut url = format!("/fhir/Patient?{query}");
    for _ in 0..20 {
        let res = w.get(&url, token).await;
        assert_eq!(res.status(), StatusCode::OK, "{url}");
        let b: Value = res.json().await.unwrap();
        for e in b["entry"].as_array().into_iter().flatten() {
            out.push(e["resource"]["id"].as_str().unwrap().parse().unwrap());
        }
        match b["link"]
            .as_array()
            .and_then(|l| l.iter().find(|l| l["relation"] == "next"))
        {
            Some(next) => url = next["url"].as_str().unwrap().to_string(),
            None => return out,
        }
    }
    panic!("paging does not end: {query}");
}

#[tokio::test]
async fn contains_matches_any_substring_of_a_name_word_within_what_the_caller_may_see() {
    let w = World::new().await;
    let (_, doc) = w.user("dr-a", &[Role::Clinician]);
    let (_, other) = w.user("dr-b", &[Role::Clinician]);
    let smithson = w.create(&doc, &patient_json("MRN-C1", "Smithson")).await;
    let blacksmith = w.create(&doc, &patient_json("MRN-C2", "Blacksmith")).await;
    let double = w
        .create(&doc, &patient_json("MRN-C3", "Lane Goldsmith"))
        .await;
    let smythe = w.create(&doc, &patient_json("MRN-C4", "Smythe")).await;
    let accented = w.create(&doc, &patient_json("MRN-C5", "Müllerton")).await;
    // On another clinician's care team only: never found by dr-a.
    let unseen = w
        .create(&other, &patient_json("MRN-C6", "Arrowsmith"))
        .await;

    // The middle and the end of a word, the start too; case-insensitive.
    assert_eq!(
        ids(&w, "family:contains=mith", &doc).await,
        sorted(vec![smithson, blacksmith, double])
    );
    assert_eq!(
        ids(&w, "family:contains=SMITH", &doc).await,
        sorted(vec![smithson, blacksmith, double])
    );
    assert_eq!(ids(&w, "family:contains=ksm", &doc).await, vec![blacksmith]);
    assert_eq!(ids(&w, "family:contains=son", &doc).await, vec![smithson]);
    assert_eq!(ids(&w, "family:contains=ythe", &doc).await, vec![smythe]);
    assert_eq!(ids(&w, "family:contains=ane", &doc).await, vec![double]);
    assert_eq!(
        ids(&w, "family:contains=%20%20Goldsm%20", &doc).await,
        vec![double]
    );
    // Normalised like starts-with: Unicode lowercase, no accent folding.
    assert_eq!(ids(&w, "family:contains=ÜLLE", &doc).await, vec![accented]);
    assert!(ids(&w, "family:contains=ulle", &doc).await.is_empty());
    // Exact semantics: near misses, a whole word longer than the name, another field.
    assert!(ids(&w, "family:contains=mitx", &doc).await.is_empty());
    assert!(ids(&w, "family:contains=smithsons", &doc).await.is_empty());
    assert!(ids(&w, "family:contains=ver", &doc).await.is_empty());
    assert_eq!(ids(&w, "given:contains=VER", &doc).await.len(), 5);
    assert_eq!(ids(&w, "given:contains=uin", &doc).await.len(), 5);
    assert_eq!(
        ids(&w, "given:contains=uin&family:contains=hso", &doc).await,
        vec![smithson]
    );
    // Comma-separated values are an OR (one index lookup); each value is checked.
    assert_eq!(
        ids(&w, "family:contains=ksm,ythe", &doc).await,
        sorted(vec![blacksmith, smythe])
    );
    let (status, _) = refused(&w, "family:contains=ksm,yt", &doc).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Policy: the caller's scope is part of the query; the other clinician finds theirs.
    assert!(ids(&w, "family:contains=rrow", &doc).await.is_empty());
    assert_eq!(ids(&w, "family:contains=rrow", &other).await, vec![unseen]);
    assert_eq!(ids(&w, "family:contains=mith", &other).await, vec![unseen]);
    let counted: Value = w
        .get("/fhir/Patient?family:contains=mith&_summary=count", &doc)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(counted["total"], 3, "counts only what the caller may see");

    // Paged one at a time, by id and sorted newest first: every match once, in order.
    let by_id = paged(&w, "family:contains=mith&_count=1", &doc).await;
    assert_eq!(by_id, sorted(vec![smithson, blacksmith, double]));
    let newest = paged(
        &w,
        "family:contains=mith&_count=1&_sort=-_lastUpdated",
        &doc,
    )
    .await;
    assert_eq!(newest, vec![double, blacksmith, smithson]);
    // After an update, the sort and the indexes follow the new name.
    let mut renamed = patient_json("MRN-C1", "Hartsmithe");
    renamed["id"] = Value::String(smithson.to_string());
    let res = w
        .send(
            reqwest::Method::PUT,
            &format!("/fhir/Patient/{smithson}"),
            &doc,
            Some(&renamed),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let newest = paged(
        &w,
        "family:contains=mith&_count=2&_sort=-_lastUpdated",
        &doc,
    )
    .await;
    assert_eq!(newest, vec![smithson, double, blacksmith]);
    assert!(ids(&w, "family:contains=hson", &doc).await.is_empty());
    assert_eq!(ids(&w, "family:contains=tsm", &doc).await, vec![smithson]);

    // Too short, too long or across words: a fixed 400 that repeats nothing of the value.
    let long = "q".repeat(41);
    for q in [
        "family:contains=mi".to_string(),
        "family:contains=%20m%20".to_string(),
        "given:contains=ve".to_string(),
        format!("family:contains={long}"),
        "family:contains=ne%20gol".to_string(),
    ] {
        let (status, body) = refused(&w, &q, &doc).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{q}");
        assert!(
            body.contains("needs 3 to 40 characters within one word"),
            "{q}: {body}"
        );
        for echo in ["\"mi\"", "qqqq", "gol"] {
            assert!(!body.contains(echo), "{q}: {body}");
        }
    }
    // One form of a parameter at a time.
    let (status, _) = refused(&w, "family=smi&family:contains=mith", &doc).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = refused(&w, "family:exact=x&family:contains=mith", &doc).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    // Also by POST, and the search is audited with the patients of the page only.
    let res = w
        .app
        .client
        .post(w.app.url("/fhir/Patient/_search"))
        .header("authorization", format!("Bearer {doc}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("family:contains=ksm")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let last = w.audit_events().pop().unwrap();
    assert_eq!((last.0.as_str(), last.1.as_str()), ("search", "permit"));
    assert_eq!(last.2, vec![blacksmith]);
}

#[derive(QueryableByName)]
struct Infixes {
    #[diesel(sql_type = diesel::sql_types::Text)]
    json: String,
    #[diesel(sql_type = diesel::sql_types::Array<diesel::sql_types::Bytea>)]
    infixes: Vec<Vec<u8>>,
}

#[tokio::test]
async fn infix_indexes_are_keyed_tags_and_old_rows_are_indexed_by_the_backfill() {
    let w = World::new().await;
    let (_, doc) = w.user("dr-a", &[Role::Clinician]);
    let id = w.create(&doc, &patient_json("MRN-I1", "Harrowgate")).await;

    // Every stored substring is a 32-byte keyed tag of the blind-index key; no substring
    // of a name is stored in clear, neither as text nor as bytes.
    let stored: Infixes = diesel::sql_query(
        "SELECT row_to_json(p)::text AS json, name_infixes AS infixes FROM patients p WHERE id = $1",
    )
    .bind::<diesel::sql_types::Uuid, _>(id)
    .get_result(&mut w.app.db.conn())
    .unwrap();
    // "harrowgate" (10): 8+7+…+1 = 36; "avery" (5): 6; "quinn" (5): 6.
    assert_eq!(stored.infixes.len(), 36 + 6 + 6);
    assert!(stored.infixes.iter().all(|t| t.len() == 32));
    let hex = |s: &str| s.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    for plain in ["rro", "owg", "gate", "harrowgate", "ery", "uin"] {
        assert!(!stored.json.contains(plain), "{plain} in clear");
        assert!(!stored.json.contains(&hex(plain)), "{plain} as bytes");
        assert!(
            !stored
                .infixes
                .iter()
                .any(|t| t.windows(plain.len()).any(|w| w == plain.as_bytes())),
            "{plain} inside a tag"
        );
    }
    for q in ["rro", "gate", "harrowgate"] {
        let tag = w.keyring.infix_query(BlindKind::FamilyInfix, q).unwrap();
        assert!(stored.infixes.contains(&tag), "{q}");
    }

    // A row written before the infix indexes existed (as after the migration) is not
    // found by :contains until `custodian keys index-names`, which changes neither the
    // content nor the version.
    let mut conn = w.app.db.conn();
    diesel::sql_query("UPDATE patients SET name_infixes = NULL")
        .execute(&mut conn)
        .unwrap();
    assert!(ids(&w, "family:contains=owga", &doc).await.is_empty());
    assert_eq!(ids(&w, "family=harrow", &doc).await, vec![id]);
    let n = custodian::db::patients::index_name_prefixes(&mut conn, &w.keyring).unwrap();
    assert_eq!(n, 1);
    assert_eq!(
        custodian::db::patients::index_name_prefixes(&mut conn, &w.keyring).unwrap(),
        0,
        "nothing left"
    );
    assert_eq!(ids(&w, "family:contains=owga", &doc).await, vec![id]);
    let res = w.get(&format!("/fhir/Patient/{id}"), &doc).await;
    assert_eq!(res.headers()["etag"], "W/\"1\"");
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
