//! Strict input over HTTP (issue 18, finding 10): a body is exactly one JSON document, and
//! single-line fields refuse the Unicode line and paragraph separators like other line
//! breaks. Refused input stores nothing and is never echoed.

use crate::support::world::{World, patient_json};
use custodian::policy::Role;
use diesel::prelude::*;
use reqwest::Method;

fn patients(w: &World) -> i64 {
    custodian::db::schema::patients::table
        .count()
        .get_result(&mut w.app.db.conn())
        .unwrap()
}

#[tokio::test]
async fn a_body_with_data_after_the_document_is_a_400_and_stores_nothing() {
    let w = World::new().await;
    let (_, doc) = w.user("dr-strict", &[Role::Clinician]);
    let one = patient_json("MRN-8901", "Strictson").to_string();
    for body in [
        format!("{one}CANARY-garbage"),
        format!("{one}{one}"),
        format!("{one} [1]"),
        format!("{one}\u{0}"),
    ] {
        let res = w
            .app
            .client
            .post(w.app.url("/fhir/Patient"))
            .header("authorization", format!("Bearer {doc}"))
            .header("content-type", "application/fhir+json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400);
        let text = res.text().await.unwrap();
        assert!(
            text.contains("The request body has data after the JSON document."),
            "{text}"
        );
        assert!(
            !text.contains("CANARY") && !text.contains("Strictson"),
            "{text}"
        );
    }
    assert_eq!(patients(&w), 0, "nothing was stored");
    // Whitespace after the document is not data.
    let res = w
        .app
        .client
        .post(w.app.url("/fhir/Patient"))
        .header("authorization", format!("Bearer {doc}"))
        .header("content-type", "application/fhir+json")
        .body(format!("{one} \r\n\t"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
}

#[tokio::test]
async fn line_and_paragraph_separators_are_refused_in_single_line_fields() {
    let w = World::new().await;
    let (_, doc) = w.user("dr-lines", &[Role::Clinician]);
    for separator in ['\u{2028}', '\u{2029}', '\n'] {
        let family = format!("Line{separator}Breakson");
        let mut cases = vec![("name[0].family", patient_json("MRN-8911", &family))];
        let mut given = patient_json("MRN-8912", "Givenson");
        given["name"][0]["given"][0] = format!("Av{separator}ery").into();
        cases.push(("name[0].given", given));
        let mut city = patient_json("MRN-8913", "Cityson");
        city["address"][0]["city"] = format!("Test{separator}ville").into();
        cases.push(("address", city));
        for (field, body) in cases {
            let res = w
                .send(Method::POST, "/fhir/Patient", &doc, Some(&body))
                .await;
            assert_eq!(res.status(), 422, "{field} with {separator:?}");
            let text = res.text().await.unwrap();
            assert!(!text.contains("Breakson"), "{text}");
        }
    }
    assert_eq!(patients(&w), 0, "nothing was stored");
    // A name with an ordinary space still works.
    let ok = patient_json("MRN-8914", "Van Der Berg");
    assert_eq!(
        w.send(Method::POST, "/fhir/Patient", &doc, Some(&ok))
            .await
            .status(),
        201
    );
}
