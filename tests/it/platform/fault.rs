//! Fault injection against the real `custodian serve` binary under load:
//!
//! - PostgreSQL stopped with `pg_ctl stop -m immediate` (a crash, as far as clients can
//!   tell) while requests run: every answer is a 200/201 or a 503 with `Retry-After`;
//!   every success has its committed audit event (counted by request id); the same
//!   process serves again once the database is back; `custodian audit verify` passes.
//!   This needs a PostgreSQL cluster of its own (started from initdb/pg_ctl as the
//!   `postgres` user), so that stopping it disturbs no other test.
//! - Custodian killed with SIGKILL while it writes: no record without its audit event or
//!   event without its record, every record still reads, the chain verifies, and a new
//!   process appends to it.

use crate::support::idp::{Provider, Signer};
use crate::support::serve::{
    self, Answer, Served, audit_verify, chain_shape, each_success_has_its_event, one_request,
    start_load,
};
use crate::support::{TestDb, free_port};
use custodian::db::{phi, users};
use custodian::dev::pgcluster::{self, LocalCluster};
use custodian::policy::Role;
use diesel::prelude::*;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A PostgreSQL cluster for one test, in its own folder; stopped and removed on drop.
struct PrivateCluster {
    cluster: LocalCluster,
    root: PathBuf,
}

impl PrivateCluster {
    fn start() -> PrivateCluster {
        let preferred = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("custodian-fault-pg-{}", std::process::id()));
        let (root, _) = pgcluster::reachable_root(&preferred).unwrap();
        // A folder left by a crashed run of this process id: start afresh.
        if root.join("pgdata/postmaster.pid").exists() {
            let _ = pg_ctl_stop(&root, "immediate");
        }
        let _ = std::fs::remove_dir_all(&root);
        let cluster = LocalCluster::new(&root, Some(free_port()), false).unwrap();
        cluster.init_if_needed().unwrap();
        cluster.start().unwrap();
        cluster.ensure_database("custodian").unwrap();
        PrivateCluster { cluster, root }
    }

    fn url(&self) -> String {
        self.cluster.url("custodian")
    }

    fn restart(&self) {
        self.cluster.start().unwrap();
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let _ = pg_ctl_stop(&self.root, "immediate");
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn pg_ctl_stop(root: &std::path::Path, mode: &str) -> Result<(), String> {
    let pg_ctl = pgcluster::find_bindir().unwrap().join("pg_ctl");
    let mut cmd = if pgcluster::running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(pg_ctl);
        c
    } else {
        Command::new(pg_ctl)
    };
    let out = cmd
        .arg("stop")
        .arg("-D")
        .arg(root.join("pgdata"))
        .args(["-m", mode, "-w"])
        .current_dir(root)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

/// A clinician in a facility, for the load's tokens.
fn clinician(conn: &mut PgConnection, issuer: &str, sub: &str) {
    let facility = phi::insert_facility(conn, "Fault Hospital").unwrap();
    let u = users::user_for(conn, issuer, sub, users::UserKind::Person).unwrap();
    users::grant_role(conn, u.id, Role::Clinician, "fault suite", None).unwrap();
    users::set_facility(conn, u.id, Some(facility)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn database_crash_under_load_gives_only_503_with_retry_after_and_loses_no_audit_event() {
    let started = Instant::now();
    let pg = tokio::task::spawn_blocking(PrivateCluster::start)
        .await
        .unwrap();
    let url = pg.url();
    {
        let url = url.clone();
        tokio::task::spawn_blocking(move || custodian::db::migrate(&url, 5).unwrap())
            .await
            .unwrap();
    }
    let signer = Signer::es256("fault");
    let idp = Provider::start(&[&signer]).await;
    clinician(
        &mut PgConnection::establish(&url).unwrap(),
        &idp.issuer(),
        "dr-fault",
    );
    let token = serve::token(&signer, &idp.issuer(), "dr-fault");
    let mut server = Served::start(&url, &idp.issuer()).await;
    let pid = server.pid();

    let stop = Arc::new(AtomicBool::new(false));
    let (load, answers) = start_load(vec![server.url("")], vec![token], 6, stop.clone());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before_crash = answers.lock().unwrap().len();

    // `pg_ctl stop -m immediate`: every backend is killed, nothing is shut down cleanly.
    tokio::task::spawn_blocking({
        let root = pg.root.clone();
        move || pg_ctl_stop(&root, "immediate").unwrap()
    })
    .await
    .unwrap();
    let crashed_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during_outage: Vec<Answer> = answers
        .lock()
        .unwrap()
        .iter()
        .filter(|a| a.at > crashed_at + Duration::from_millis(500))
        .cloned()
        .collect();

    let restarted = tokio::task::spawn_blocking(move || {
        pg.restart();
        pg
    })
    .await
    .unwrap();
    let restarted_at = Instant::now();

    // Recovery without restarting Custodian: successes again. The deadline is generous
    // because CI runs this beside the rest of the suite on few cores.
    let deadline = restarted_at + Duration::from_secs(60);
    loop {
        let recovered = answers
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.at > restarted_at && matches!(a.status, Some(200) | Some(201)))
            .count();
        if recovered >= 5 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no recovery within 60 s of the database's return:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for h in load {
        h.await.unwrap();
    }
    assert!(server.is_running(), "custodian serve was not restarted");
    assert_eq!(server.pid(), pid);
    let answers = answers.lock().unwrap().clone();

    // Only successes and 503 + Retry-After, before, during and after the outage.
    let mut tally: HashMap<String, usize> = HashMap::new();
    for a in &answers {
        let key = format!("{} {:?}", a.what, a.status);
        *tally.entry(key).or_default() += 1;
    }
    for a in &answers {
        match a.status {
            Some(200) | Some(201) => {}
            Some(503) => assert!(
                a.retry_after
                    .as_deref()
                    .is_some_and(|v| v.parse::<u64>().is_ok()),
                "a 503 without a valid Retry-After: {a:?}"
            ),
            _ => panic!(
                "{} answered {:?} (only 2xx and 503 are acceptable); all answers: {tally:?}\n{}",
                a.what,
                a.status,
                server.log()
            ),
        }
    }
    assert!(
        !during_outage.is_empty() && during_outage.iter().all(|a| a.status == Some(503)),
        "while the database is down every answer is a 503: {during_outage:?}"
    );
    assert!(before_crash >= 10, "the load ran before the crash");

    let mut conn = PgConnection::establish(&restarted.url()).unwrap();
    let successes = each_success_has_its_event(&mut conn, &answers);
    let created = answers.iter().filter(|a| a.created.is_some()).count();
    let (count, lo, hi, head) = chain_shape(&mut conn);
    assert_eq!((lo, hi, head), (1, count, count), "no gap in the chain");
    let url = restarted.url();
    let (ok, text) = tokio::task::spawn_blocking(move || audit_verify(&url))
        .await
        .unwrap();
    assert!(ok, "audit verify after the crash: {text}");
    eprintln!(
        "fault suite (database crash): {} requests ({successes} successes, each with its \
         audit event; {created} patients created; {} answers of 503 + Retry-After), \
         {count} audit events; {:.1} s",
        answers.len(),
        answers.iter().filter(|a| a.status == Some(503)).count(),
        started.elapsed().as_secs_f64()
    );
    drop(conn);
    drop(server);
    tokio::task::spawn_blocking(move || drop(restarted))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_during_writes_leaves_no_half_written_record_and_the_chain_verifies() {
    let started = Instant::now();
    let db = TestDb::create();
    let signer = Signer::es256("kill");
    let idp = Provider::start(&[&signer]).await;
    clinician(&mut db.conn(), &idp.issuer(), "dr-kill");
    let token = serve::token(&signer, &idp.issuer(), "dr-kill");
    let mut server = Served::start(&db.url, &idp.issuer()).await;

    // Writes only (every request a create), from several connections.
    let stop = Arc::new(AtomicBool::new(false));
    let (load, answers) = start_load_writes(server.url(""), token.clone(), 8, stop.clone());
    // Kill once writes are flowing.
    let deadline = Instant::now() + Duration::from_secs(20);
    while answers
        .lock()
        .unwrap()
        .iter()
        .filter(|a| a.status == Some(201))
        .count()
        < 30
    {
        assert!(Instant::now() < deadline, "no writes:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.kill();
    stop.store(true, Ordering::SeqCst);
    for h in load {
        h.await.unwrap();
    }
    let answers = answers.lock().unwrap().clone();
    let acknowledged: Vec<&str> = answers
        .iter()
        .filter_map(|a| a.created.as_deref())
        .collect();

    let mut conn = db.conn();
    #[derive(QueryableByName)]
    struct Orphans {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        patients: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        without_event: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        events_without_patient: i64,
    }
    // A stored patient has its permitted create event, and a permitted create event has
    // its patient: the data change and its event commit together or not at all.
    let o: Orphans = diesel::sql_query(
        "SELECT (SELECT count(*) FROM patients) AS patients, \
         (SELECT count(*) FROM patients p WHERE NOT EXISTS (SELECT 1 FROM audit_events e \
            WHERE e.resource_id = p.id AND e.action = 'create' AND e.outcome = 'permit')) \
            AS without_event, \
         (SELECT count(*) FROM audit_events e WHERE e.action = 'create' \
            AND e.outcome = 'permit' AND e.resource_type = 'Patient' \
            AND NOT EXISTS (SELECT 1 FROM patients p WHERE p.id = e.resource_id)) \
            AS events_without_patient",
    )
    .get_result(&mut conn)
    .unwrap();
    assert!(o.patients as usize >= acknowledged.len());
    assert_eq!(
        o.without_event, 0,
        "patients stored without their audit event"
    );
    assert_eq!(
        o.events_without_patient, 0,
        "create events without their patient"
    );
    let (count, lo, hi, head) = chain_shape(&mut conn);
    assert_eq!((lo, hi, head), (1, count, count), "no gap in the chain");
    let url = db.url.clone();
    let (ok, text) = tokio::task::spawn_blocking(move || audit_verify(&url))
        .await
        .unwrap();
    assert!(ok, "audit verify after SIGKILL: {text}");

    // A new process continues the same chain, and every acknowledged record reads whole
    // (decrypts) through it.
    let server = Served::start(&db.url, &idp.issuer()).await;
    for id in &acknowledged {
        let res = server
            .client
            .get(server.url(&format!("/fhir/Patient/{id}")))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "acknowledged patient {id} after SIGKILL");
    }
    drop(server);
    let (count_after, _, hi_after, head_after) = chain_shape(&mut conn);
    assert_eq!((hi_after, head_after), (count_after, count_after));
    assert!(count_after > count);
    let url = db.url.clone();
    let (ok, text) = tokio::task::spawn_blocking(move || audit_verify(&url))
        .await
        .unwrap();
    assert!(ok, "audit verify after the restart: {text}");
    eprintln!(
        "fault suite (SIGKILL): {} writes acknowledged, {} patients stored, {count} events \
         before and {count_after} after the restart; {:.1} s",
        acknowledged.len(),
        o.patients,
        started.elapsed().as_secs_f64()
    );
}

/// Like [`start_load`], creates only.
fn start_load_writes(
    base: String,
    token: String,
    workers: usize,
    stop: Arc<AtomicBool>,
) -> (Vec<tokio::task::JoinHandle<()>>, Arc<Mutex<Vec<Answer>>>) {
    let answers = Arc::new(Mutex::new(Vec::new()));
    let counter = Arc::new(AtomicU64::new(0));
    let client = crate::support::client();
    let handles = (0..workers)
        .map(|_| {
            let (base, token) = (base.clone(), token.clone());
            let (answers, counter, stop) = (answers.clone(), counter.clone(), stop.clone());
            let client = client.clone();
            let known = Mutex::new(Vec::new());
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    // Multiples of 3 are creates in `one_request`.
                    let n = counter.fetch_add(1, Ordering::SeqCst) * 3;
                    let a = one_request(&client, &base, &token, n, &known).await;
                    let dead = a.status.is_none();
                    answers.lock().unwrap().push(a);
                    if dead {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            })
        })
        .collect();
    (handles, answers)
}
