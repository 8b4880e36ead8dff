//! The production binary's logs and audit trail never carry PHI, tokens or request text:
//! `custodian serve` runs as a child process with JSON logs at debug level while requests
//! full of canary values go through it.

use crate::support::idp::{Provider, Signer, now};
use crate::support::{TEST_CHAIN_KEY, TEST_SIGNING_KEY, TestDb, test_cert, test_keys};
use custodian::db::{phi, users};
use custodian::policy::Role;
use diesel::prelude::*;
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

const CANARIES: [&str; 6] = [
    "Zzcanaryfamily",
    "Zzcanarygiven",
    "CANARY-MRN-777",
    "219-47-3861",
    "Zzcanaryquery",
    "zzcanaryheader",
];

#[tokio::test]
async fn serve_logs_and_audit_rows_carry_no_phi_tokens_or_request_text() {
    let db = TestDb::create();
    let signer = Signer::es256("k1");
    let idp = Provider::start(&[&signer]).await;
    let facility = phi::insert_facility(&mut db.conn(), "Log Test Hospital").unwrap();
    {
        let mut c = db.conn();
        let u = users::user_for(&mut c, &idp.issuer(), "dr-log", users::UserKind::Person).unwrap();
        users::grant_role(&mut c, u.id, Role::Clinician, "test", None).unwrap();
        users::set_facility(&mut c, u.id, Some(facility)).unwrap();
    }
    let cert = test_cert();
    let mut child = Command::new(env!("CARGO_BIN_EXE_custodian"))
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &db.url)
        .env("CUSTODIAN_SERVER_LISTEN", "127.0.0.1:0")
        .env("CUSTODIAN_TLS_CERT_FILE", &cert.cert)
        .env("CUSTODIAN_TLS_KEY_FILE", &cert.key)
        .env("CUSTODIAN_AUDIT_CHAIN_KEY", TEST_CHAIN_KEY)
        .env("CUSTODIAN_AUDIT_CHECKPOINT_SIGNING_KEY", TEST_SIGNING_KEY)
        .env("CUSTODIAN_CRYPTO_KEK", &test_keys().kek)
        .env(
            "CUSTODIAN_CRYPTO_BLIND_INDEX_KEY",
            &test_keys().blind_index_key,
        )
        .env("CUSTODIAN_AUTH_ISSUER", idp.issuer())
        .env("CUSTODIAN_AUTH_AUDIENCE", "https://custodian.test/fhir")
        .env("CUSTODIAN_SERVER_SHUTDOWN_TIMEOUT_SECS", "1")
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Every line of stdout and stderr is collected; the address comes from the
    // "serving" line.
    let (tx, log_rx) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    let tx_err = tx.clone();
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx_err.send(l);
        }
    });
    let stdout = child.stdout.take().unwrap();
    let (port_tx, port_rx) = std::sync::mpsc::channel::<u16>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("\"serving\"")
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && let Some(port) = v["https"].as_str().and_then(|a| a.rsplit(':').next())
            {
                let _ = port_tx.send(port.parse().unwrap());
            }
            let _ = tx.send(line);
        }
    });
    let port = tokio::task::spawn_blocking(move || {
        port_rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("serve printed its address")
    })
    .await
    .unwrap();

    let client = crate::support::client();
    let base = format!("https://localhost:{port}");
    let token = signer.sign(&json!({
        "iss": idp.issuer(), "aud": "https://custodian.test/fhir", "sub": "dr-log",
        "exp": now() + 300, "iat": now(), "scope": "user/Patient.cruds",
    }));
    let patient = json!({
        "resourceType": "Patient",
        "identifier": [
            { "system": "urn:custodian:mrn", "value": CANARIES[2] },
            { "system": "http://hl7.org/fhir/sid/us-ssn", "value": CANARIES[3] }
        ],
        "name": [{ "family": CANARIES[0], "given": [CANARIES[1]] }],
        "gender": "other",
        "birthDate": "1980-01-01"
    });
    // A clinician may not write the SSN (outside its view): that request is refused, and
    // its canary must stay out of the logs too; the same patient without it is created.
    let refused = client
        .post(format!("{base}/fhir/Patient"))
        .bearer_auth(&token)
        .header("content-type", "application/fhir+json")
        .header("x-custom", CANARIES[5])
        .body(patient.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let mut patient = patient;
    patient["identifier"].as_array_mut().unwrap().truncate(1);
    let created = client
        .post(format!("{base}/fhir/Patient"))
        .bearer_auth(&token)
        .header("content-type", "application/fhir+json")
        .header("x-custom", CANARIES[5])
        .body(patient.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let id = created.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let read = client
        .get(format!("{base}/fhir/Patient/{id}"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    for q in [
        format!("family={}", CANARIES[0]),
        format!("family={}", CANARIES[4]),
        format!("identifier={}", CANARIES[2]),
    ] {
        let res = client
            .get(format!("{base}/fhir/Patient?{q}"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    // A refused token and a malformed body are logged too.
    let bad = client
        .get(format!("{base}/fhir/Patient/{id}"))
        .bearer_auth(format!("{token}x"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);
    let malformed = client
        .post(format!("{base}/fhir/Patient"))
        .bearer_auth(&token)
        .header("content-type", "application/fhir+json")
        .body(format!(
            "{{\"resourceType\":\"Patient\",\"name\":\"{}\"",
            CANARIES[0]
        ))
        .send()
        .await
        .unwrap();
    assert!(malformed.status().is_client_error());

    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success());
    // Give the reader threads a moment to drain the pipes after exit.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let all = log_rx.try_iter().collect::<Vec<_>>().join("\n");
    assert!(
        all.contains("/fhir/Patient/{id}"),
        "access lines name the route pattern"
    );
    assert!(
        all.contains("custodian::access"),
        "access lines are there: {all}"
    );
    let token_parts: Vec<&str> = token.split('.').collect();
    for needle in CANARIES.iter().copied().chain(token_parts.iter().copied()) {
        assert!(
            !all.to_lowercase().contains(&needle.to_lowercase()),
            "{needle} appears in the logs"
        );
    }
    assert!(!all.contains("family="), "no query strings");

    #[derive(QueryableByName)]
    struct Dump {
        #[diesel(sql_type = diesel::sql_types::Text)]
        text: String,
    }
    let dump: Vec<Dump> = diesel::sql_query(
        "SELECT row_to_json(a)::text AS text FROM audit_events a UNION ALL SELECT row_to_json(c)::text FROM audit_checkpoints c",
    )
    .load(&mut db.conn())
    .unwrap();
    assert!(dump.len() >= 6, "every request was audited");
    let audit = dump
        .into_iter()
        .map(|d| d.text)
        .collect::<Vec<_>>()
        .join("\n");
    for needle in CANARIES {
        assert!(
            !audit.to_lowercase().contains(&needle.to_lowercase()),
            "{needle} appears in the audit trail"
        );
    }
    idp.stop().await;
}
