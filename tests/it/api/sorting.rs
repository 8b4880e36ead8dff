//! `_sort` (issue 16): one or two declared timestamp keys per search, `-` for descending,
//! paged by keyset cursors that carry the sort values sealed; sealed fields are refused.
//! And the bounds of `_count`.

use crate::api::resources::observation_json;
use crate::support::world::{World, patient_json};
use custodian::policy::Role;
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// Follows `next` links from `first` to the end: every page's entry ids, in order.
async fn walk(w: &World, first: &str, token: &str) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut next = Some(w.app.url(first));
    while let Some(url) = next {
        let res = w
            .app
            .client
            .get(&url)
            .header("authorization", format!("Bearer {token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{url}");
        let b: Value = res.json().await.unwrap();
        pages.push(
            b["entry"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
                        .collect()
                })
                .unwrap_or_default(),
        );
        next = b["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
            .map(|l| w.app.url(l["url"].as_str().unwrap()));
        assert!(pages.len() < 20, "paging ends");
    }
    pages
}

async fn status(w: &World, path: &str, token: &str) -> (StatusCode, String) {
    let res = w.get(path, token).await;
    (res.status(), res.text().await.unwrap())
}

#[tokio::test]
async fn sorted_searches_page_to_the_end_in_order_and_sealed_fields_are_refused() {
    let w = World::new().await;
    let (_, doc) = w.user("dr-a", &[Role::Clinician]);
    let patient = w.create(&doc, &patient_json("MRN-S1", "Sorter")).await;

    // Five observations whose dates are neither in id nor in creation order.
    let days = [
        "2026-11-03",
        "2026-11-01",
        "2026-11-05",
        "2026-11-02",
        "2026-11-04",
    ];
    let mut by_day = Vec::new();
    for day in days {
        let mut o = observation_json(patient);
        o["effectiveDateTime"] = Value::String(format!("{day}T08:00:00Z"));
        let res = w
            .send(Method::POST, "/fhir/Observation", &doc, Some(&o))
            .await;
        assert_eq!(res.status(), StatusCode::CREATED);
        let o: Value = res.json().await.unwrap();
        by_day.push((day, o["id"].as_str().unwrap().to_string()));
    }
    by_day.sort();
    let ascending: Vec<String> = by_day.iter().map(|(_, id)| id.clone()).collect();
    let descending: Vec<String> = ascending.iter().rev().cloned().collect();

    let q = format!("/fhir/Observation?patient={patient}&_count=2");
    let pages = walk(&w, &format!("{q}&_sort=date"), &doc).await;
    assert_eq!(pages.len(), 3, "2 + 2 + 1");
    assert_eq!(pages.concat(), ascending);
    let pages = walk(&w, &format!("{q}&_sort=-date"), &doc).await;
    assert_eq!(pages.concat(), descending);

    // _lastUpdated: an update moves a record to the end (and to the front descending).
    let moved = ascending[0].clone();
    let mut o = observation_json(patient);
    o["id"] = Value::String(moved.clone());
    o["effectiveDateTime"] = Value::String("2026-11-01T08:00:00Z".into());
    o["status"] = Value::String("amended".into());
    let res = w
        .send(
            Method::PUT,
            &format!("/fhir/Observation/{moved}"),
            &doc,
            Some(&o),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let by_update = walk(&w, &format!("{q}&_sort=_lastUpdated"), &doc)
        .await
        .concat();
    assert_eq!(by_update.len(), 5);
    assert_eq!(by_update.last(), Some(&moved));
    let newest_first = walk(&w, &format!("{q}&_sort=-_lastUpdated"), &doc)
        .await
        .concat();
    assert_eq!(newest_first.first(), Some(&moved));
    assert_eq!(
        newest_first.iter().rev().cloned().collect::<Vec<_>>(),
        by_update
    );

    // A search by POST keeps its order in the sealed cursor.
    let res = w
        .app
        .client
        .post(w.app.url("/fhir/Observation/_search"))
        .header("authorization", format!("Bearer {doc}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("patient={patient}&_count=2&_sort=-date"))
        .send()
        .await
        .unwrap();
    let b: Value = res.json().await.unwrap();
    let next = b["link"][1]["url"].as_str().unwrap().to_string();
    assert!(!next.contains("_sort"), "{next}");
    let mut post: Vec<String> = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
        .collect();
    let rest = walk(&w, &next, &doc).await;
    post.extend(rest.concat());
    assert_eq!(post, descending);

    // Patients sort by _lastUpdated.
    let second = w.create(&doc, &patient_json("MRN-S2", "Sorter")).await;
    let pages = walk(
        &w,
        "/fhir/Patient?family=sorter&_count=1&_sort=-_lastUpdated",
        &doc,
    )
    .await;
    assert_eq!(
        pages.concat(),
        vec![second.to_string(), patient.to_string()]
    );

    // Sealed fields, undeclared keys, several keys: one fixed 400 that repeats nothing.
    for bad in [
        "/fhir/Patient?_sort=birthdate",
        "/fhir/Patient?_sort=-family",
        "/fhir/Patient?_sort=given",
        "/fhir/Patient?_sort=identifier",
        "/fhir/Patient?_sort=date",
        "/fhir/Observation?_sort=date,_lastUpdated,date",
        "/fhir/Observation?_sort=code",
    ] {
        let (s, body) = status(&w, bad, &doc).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert!(body.contains("Sealed fields"), "{bad}: {body}");
        assert!(body.contains("OperationOutcome"), "{bad}");
    }

    // A sorted page's cursor continues that order only.
    let first: Value = w
        .get(&format!("{q}&_sort=date"), &doc)
        .await
        .json()
        .await
        .unwrap();
    let next = first["link"][1]["url"].as_str().unwrap().to_string();
    let unsorted = next.replace("&_sort=date", "").replace("_sort=date&", "");
    assert_ne!(unsorted, next);
    let res = w
        .app
        .client
        .get(w.app.url(&unsorted))
        .header("authorization", format!("Bearer {doc}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);

    // The CapabilityStatement declares _sort on every record type (the audit trail's
    // AuditEvent search has one fixed order, newest first, and does not claim _sort).
    let cap: Value = w.get("/fhir/metadata", &doc).await.json().await.unwrap();
    let resources = cap["rest"][0]["resource"].as_array().unwrap();
    for r in resources.iter().filter(|r| r["type"] != "AuditEvent") {
        assert!(
            r["searchParam"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "_sort"),
            "{}",
            r["type"]
        );
    }
}

#[tokio::test]
async fn two_sort_keys_order_ties_by_the_second_and_paging_keeps_that_order() {
    let w = World::new().await;
    let (_, doc) = w.user("dr-a", &[Role::Clinician]);
    let patient = w.create(&doc, &patient_json("MRN-S3", "Twokeys")).await;

    // Created in this order (so `_lastUpdated` is this order): three on day A, two on B.
    let days = [
        "2026-11-02",
        "2026-11-01",
        "2026-11-02",
        "2026-11-01",
        "2026-11-01",
    ];
    let mut ids = Vec::new();
    for day in days {
        let mut o = observation_json(patient);
        o["effectiveDateTime"] = Value::String(format!("{day}T08:00:00Z"));
        let res = w
            .send(Method::POST, "/fhir/Observation", &doc, Some(&o))
            .await;
        assert_eq!(res.status(), StatusCode::CREATED);
        let o: Value = res.json().await.unwrap();
        ids.push(o["id"].as_str().unwrap().to_string());
    }
    let order = |idx: &[usize]| idx.iter().map(|&i| ids[i].clone()).collect::<Vec<_>>();

    // Two per page, so a run of equal dates is split over pages.
    let q = format!("/fhir/Observation?patient={patient}&_count=2");
    for (sort, want) in [
        ("date,-_lastUpdated", order(&[4, 3, 1, 2, 0])),
        ("-date,_lastUpdated", order(&[0, 2, 1, 3, 4])),
        ("date,_lastUpdated", order(&[1, 3, 4, 0, 2])),
        ("-date,-_lastUpdated", order(&[2, 0, 4, 3, 1])),
        ("-_lastUpdated,date", order(&[4, 3, 2, 1, 0])),
    ] {
        let pages = walk(&w, &format!("{q}&_sort={sort}"), &doc).await;
        assert_eq!(pages.len(), 3, "{sort}");
        assert_eq!(pages.concat(), want, "{sort}");
    }

    // By POST: the cursor carries both keys sealed.
    let res = w
        .app
        .client
        .post(w.app.url("/fhir/Observation/_search"))
        .header("authorization", format!("Bearer {doc}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "patient={patient}&_count=2&_sort=date,-_lastUpdated"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let b: Value = res.json().await.unwrap();
    let mut post: Vec<String> = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
        .collect();
    let next = b["link"][1]["url"].as_str().unwrap().to_string();
    post.extend(walk(&w, &next, &doc).await.concat());
    assert_eq!(post, order(&[4, 3, 1, 2, 0]));

    // A cursor of a two-key order continues that order only, not a one-key order.
    let first: Value = w
        .get(&format!("{q}&_sort=date,-_lastUpdated"), &doc)
        .await
        .json()
        .await
        .unwrap();
    let next = first["link"][1]["url"].as_str().unwrap().to_string();
    let one_key = next.replace("_sort=date%2C-_lastUpdated", "_sort=date");
    assert_ne!(one_key, next);
    let res = w
        .app
        .client
        .get(w.app.url(&one_key))
        .header("authorization", format!("Bearer {doc}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);

    // The same key twice, three keys, empty keys, an undeclared or sealed key among
    // two (`family,-birthdate`: both sealed): one fixed 400.
    for bad in [
        "/fhir/Observation?_sort=date,date",
        "/fhir/Observation?_sort=date,-date",
        "/fhir/Observation?_sort=date,_lastUpdated,date",
        "/fhir/Observation?_sort=date,",
        "/fhir/Observation?_sort=,date",
        "/fhir/Observation?_sort=date,code",
        "/fhir/Patient?_sort=family,-birthdate",
        "/fhir/Patient?_sort=_lastUpdated,-_lastUpdated",
        "/fhir/Patient?_sort=_lastUpdated,family",
    ] {
        let (s, body) = status(&w, bad, &doc).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert!(body.contains("Sealed fields"), "{bad}: {body}");
        assert!(
            !body.contains("birthdate") && !body.contains("family"),
            "{bad}: {body}"
        );
    }
}

#[tokio::test]
async fn count_outside_one_to_one_hundred_is_a_422_that_repeats_nothing() {
    let w = World::new().await;
    let (_, doc) = w.user("dr-a", &[Role::Clinician]);
    let patient = w.create(&doc, &patient_json("MRN-S4", "Counted")).await;
    for _ in 0..2 {
        let res = w
            .send(
                Method::POST,
                "/fhir/Observation",
                &doc,
                Some(&observation_json(patient)),
            )
            .await;
        assert_eq!(res.status(), StatusCode::CREATED);
    }
    let searches = [
        "/fhir/Patient?family=counted".to_string(),
        format!("/fhir/Observation?patient={patient}"),
        format!("/fhir/Patient/{patient}/$everything"),
    ];
    for search in &searches {
        let sep = if search.contains('?') { '&' } else { '?' };
        // The bounds: 1 and 100 are accepted.
        for ok in ["1", "100"] {
            let (s, body) = status(&w, &format!("{search}{sep}_count={ok}"), &doc).await;
            assert_eq!(s, StatusCode::OK, "{search} _count={ok}: {body}");
        }
        let one: Value = w
            .get(&format!("{search}{sep}_count=1"), &doc)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(one["entry"].as_array().unwrap().len(), 1, "{search}");
        // 0, negative, over the maximum, not a whole number, empty, given twice: 422
        // with an OperationOutcome naming the bounds, never the value sent, never a 5xx.
        for bad in [
            "_count=0",
            "_count=-1",
            "_count=-0",
            "_count=101",
            "_count=1000",
            "_count=18446744073709551617",
            "_count=1.5",
            "_count=1e2",
            "_count=ten",
            "_count=",
            "_count=2&_count=3",
        ] {
            let (s, body) = status(&w, &format!("{search}{sep}{bad}"), &doc).await;
            assert_eq!(
                s,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{search} {bad}: {body}"
            );
            assert!(body.contains("OperationOutcome"), "{search} {bad}");
            assert!(
                !body.contains("1844674407") && !body.contains("ten"),
                "{body}"
            );
        }
        let (_, body) = status(&w, &format!("{search}{sep}_count=0"), &doc).await;
        assert!(body.contains("1 to 100"), "{search}: {body}");
    }
    // By POST too.
    let res = w
        .app
        .client
        .post(w.app.url("/fhir/Observation/_search"))
        .header("authorization", format!("Bearer {doc}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("patient={patient}&_count=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
}
