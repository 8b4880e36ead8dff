//! Several instances: three real `custodian serve` processes on one database under mixed
//! load (creates, reads and searches, round robin over the instances) write one audit
//! chain — contiguous sequence numbers, the head at the last event, every success with
//! exactly one event, `custodian audit verify` OK — and a role revoked through one
//! instance is refused by the others at the very next request (roles are read from the
//! database on every request, not cached per instance).

use crate::support::TestDb;
use crate::support::idp::{Provider, Signer};
use crate::support::serve::{
    self, Served, audit_verify, chain_shape, each_success_has_its_event, start_load,
};
use custodian::db::{phi, users};
use custodian::policy::Role;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_under_mixed_load_write_one_chain_and_share_revocations() {
    let started = Instant::now();
    let db = TestDb::create();
    let signer = Signer::es256("multi");
    let idp = Provider::start(&[&signer]).await;
    let issuer = idp.issuer();
    let mut c = db.conn();
    let facility = phi::insert_facility(&mut c, "Multi Hospital").unwrap();
    let person = |c: &mut diesel::PgConnection, sub: &str, role: Role| {
        let u = users::user_for(c, &issuer, sub, users::UserKind::Person).unwrap();
        users::grant_role(c, u.id, role, "instances suite", None).unwrap();
        users::set_facility(c, u.id, Some(facility)).unwrap();
        u.id
    };
    person(&mut c, "dr-one", Role::Clinician);
    person(&mut c, "dr-two", Role::Clinician);
    let revoked = person(&mut c, "dr-leaving", Role::Clinician);
    person(&mut c, "root", Role::Admin);
    let (a, b, c3) = tokio::join!(
        Served::start(&db.url, &issuer),
        Served::start(&db.url, &issuer),
        Served::start(&db.url, &issuer),
    );
    let instances = [a, b, c3];
    let bases: Vec<String> = instances.iter().map(|s| s.url("")).collect();

    let stop = Arc::new(AtomicBool::new(false));
    let tokens = vec![
        serve::token(&signer, &issuer, "dr-one"),
        serve::token(&signer, &issuer, "dr-two"),
    ];
    let (load, answers) = start_load(bases.clone(), tokens, 9, stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Revocation through instance 0, under the load, seen by all at the next request.
    let leaving = serve::token(&signer, &issuer, "dr-leaving");
    let client = crate::support::client();
    let res = client
        .post(format!("{}/fhir/Patient", bases[0]))
        .bearer_auth(&leaving)
        .header("content-type", "application/fhir+json")
        .body(serve::patient(9_000_001).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let id = res.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let read = |base: &str| {
        client
            .get(format!("{base}/fhir/Patient/{id}"))
            .bearer_auth(&leaving)
            .send()
    };
    for base in &bases {
        assert_eq!(read(base).await.unwrap().status(), 200, "{base} before");
    }
    let admin = serve::token_with_scope(&signer, &issuer, "root", "admin");
    let res = client
        .delete(format!(
            "{}/api/admin/users/{revoked}/roles/clinician?reason=left+the+hospital",
            bases[0]
        ))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "revoke: {}", res.status());
    for base in bases.iter().rev() {
        assert_eq!(
            read(base).await.unwrap().status(),
            403,
            "{base} still serves a revoked role"
        );
    }

    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    for h in load {
        h.await.unwrap();
    }
    let answers = answers.lock().unwrap().clone();
    for a in &answers {
        assert!(
            matches!(a.status, Some(200) | Some(201)),
            "{} answered {:?} under load on three instances",
            a.what,
            a.status
        );
    }
    let per_instance: Vec<usize> = (0..bases.len())
        .map(|i| answers.iter().filter(|a| a.instance == i).count())
        .collect();
    assert!(
        per_instance.iter().all(|n| *n >= 5),
        "each instance served load: {per_instance:?}"
    );

    let mut conn = db.conn();
    let successes = each_success_has_its_event(&mut conn, &answers);
    let (count, lo, hi, head) = chain_shape(&mut conn);
    assert_eq!(
        (lo, hi, head),
        (1, count, count),
        "one chain: sequence numbers 1..=count without gaps, the head at the last"
    );
    let url = db.url.clone();
    let (ok, text) = tokio::task::spawn_blocking(move || audit_verify(&url))
        .await
        .unwrap();
    assert!(ok, "audit verify after three instances: {text}");
    eprintln!(
        "instances suite: {} requests over 3 instances ({successes} successes, each with \
         its audit event), {count} audit events in one chain; {:.1} s",
        answers.len(),
        started.elapsed().as_secs_f64()
    );
}
