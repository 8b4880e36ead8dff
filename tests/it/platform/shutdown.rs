//! Graceful shutdown of the production binary (issue 18, finding 11): on SIGINT as on
//! SIGTERM, `custodian serve` stops accepting connections and lets every request in
//! flight finish — tested under load, with one slow request whose body is still arriving
//! when the signal comes.

use crate::support::idp::{Provider, Signer, now};
use crate::support::world::patient_json;
use crate::support::{TEST_CHAIN_KEY, TEST_SIGNING_KEY, TestDb, test_cert, test_keys};
use custodian::db::{phi, users};
use custodian::policy::Role;
use diesel::prelude::*;
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const AUDIENCE: &str = "https://custodian.test/fhir";
const LOAD_TASKS: usize = 4;

/// Starts `custodian serve` on `db` and returns the child and its HTTPS port.
async fn serve(db: &TestDb, idp: &Provider) -> (Child, u16) {
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
        .env("CUSTODIAN_AUTH_AUDIENCE", AUDIENCE)
        // Long enough that only a request that never finishes could run into it.
        .env("CUSTODIAN_SERVER_SHUTDOWN_TIMEOUT_SECS", "30")
        .env("CUSTODIAN_RATELIMIT_PER_PRINCIPAL_PER_MINUTE", "0")
        .env("CUSTODIAN_RATELIMIT_PER_ADDRESS_PER_MINUTE", "0")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
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
        }
    });
    let port = tokio::task::spawn_blocking(move || {
        port_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("serve printed its address")
    })
    .await
    .unwrap();
    (child, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigint_and_sigterm_both_let_in_flight_requests_finish_under_load() {
    for signal in ["INT", "TERM"] {
        drain_on(signal).await;
    }
}

async fn drain_on(signal: &str) {
    let db = TestDb::create();
    let signer = Signer::es256("k1");
    let idp = Provider::start(&[&signer]).await;
    let facility = phi::insert_facility(&mut db.conn(), "Shutdown Hospital").unwrap();
    {
        let mut c = db.conn();
        let u =
            users::user_for(&mut c, &idp.issuer(), "dr-drain", users::UserKind::Person).unwrap();
        users::grant_role(&mut c, u.id, Role::Clinician, "test", None).unwrap();
        users::set_facility(&mut c, u.id, Some(facility)).unwrap();
    }
    let token = signer.sign(&json!({
        "iss": idp.issuer(), "aud": AUDIENCE, "sub": "dr-drain", "exp": now() + 600,
        "iat": now(), "client_id": "drain-app", "scope": "user/Patient.cruds",
    }));
    let (mut child, port) = serve(&db, &idp).await;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    // A slow request: headers and half of the body now, the rest after the signal.
    let body = patient_json("MRN-DRAIN-1", "Drainson").to_string();
    let (first, rest) = body.split_at(body.len() / 2);
    let mut slow = crate::support::tlsclient::tls_stream(addr).await;
    slow.write_all(
        format!(
            "POST /fhir/Patient HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/fhir+json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{first}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    slow.flush().await.unwrap();

    // Load: authenticated, audited searches on kept-alive connections until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for _ in 0..LOAD_TASKS {
        let (stop, served, token) = (stop.clone(), served.clone(), token.clone());
        load.push(tokio::spawn(async move {
            let client = crate::support::client();
            let url = format!("https://localhost:{port}/fhir/Patient?family=Loadson");
            let mut failures = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                match client.get(&url).bearer_auth(&token).send().await {
                    Ok(res) if res.status() == 200 => match res.bytes().await {
                        Ok(_) => {
                            served.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => failures.push(format!("body: {e}")),
                    },
                    Ok(res) => failures.push(format!("status {}", res.status())),
                    Err(e) => failures.push(format!("{e:?}")),
                }
                // The first failure says it all (after it, every retry is refused).
                if !failures.is_empty() {
                    break;
                }
            }
            failures
        }));
    }
    let started = Instant::now();
    while served.load(Ordering::SeqCst) < 4 * LOAD_TASKS {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "load never got going"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let before = served.load(Ordering::SeqCst);
    assert!(
        Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    // Shutdown has begun once the listener refuses new connections.
    let started = Instant::now();
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "SIG{signal}: still accepting connections"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The load keeps going a little on its open connections while the server drains.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let mut failures = Vec::new();
    for task in load {
        failures.extend(task.await.unwrap());
    }
    assert!(
        failures.is_empty(),
        "SIG{signal}: requests in flight failed: {failures:?}"
    );
    assert!(
        served.load(Ordering::SeqCst) > before,
        "SIG{signal}: load went on"
    );

    // The slow request completes after the signal.
    slow.write_all(rest.as_bytes()).await.unwrap();
    slow.flush().await.unwrap();
    let mut response = Vec::new();
    let _ = slow.read_to_end(&mut response).await;
    let response = String::from_utf8_lossy(&response);
    assert!(
        response.starts_with("HTTP/1.1 201"),
        "SIG{signal}: the slow request did not complete: {response:?}"
    );
    drop(slow);

    // The process then exits by itself, successfully, well before the grace period.
    let waited = Instant::now();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "SIG{signal}: {status}");
    assert!(waited.elapsed() < Duration::from_secs(20));
    // The slow create was stored with its audit event.
    let created: i64 = custodian::db::schema::audit_events::table
        .filter(custodian::db::schema::audit_events::action.eq("create"))
        .count()
        .get_result(&mut db.conn())
        .unwrap();
    assert_eq!(created, 1, "SIG{signal}");
    idp.stop().await;
}
