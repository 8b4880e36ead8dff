//! The audit trail: append-only tables, the hash chain across writers, checkpoints,
//! tamper detection by `audit verify`, fail-closed recording, exports, no PHI.

use crate::support::{TEST_CHAIN_KEY, TEST_SIGNING_KEY, TestApp, TestDb};
use actix_web::http::Method;
use actix_web::{HttpResponse, web};
use custodian::app::routes::Routes;
use custodian::audit::chain::{self, Checkpoint};
use custodian::audit::verify::{Failure, Verified, read_checkpoint_file};
use custodian::audit::{
    Actor, AuditAction, AuditContext, AuditWriter, AuthMethod, EventBuilder, Outcome, PurposeOfUse,
    ResourceType, RoleCode, WriterSettings, ops, store,
};
use custodian::config::Config;
use custodian::domain::{PatientId, UserId};
use custodian::error::AppError;
use custodian::policy::Action;
use custodian::state::AppState;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use uuid::Uuid;

struct Fixture {
    db: TestDb,
    config: Config,
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        Self::with(|b| b)
    }

    fn with(
        f: impl FnOnce(crate::support::TestAppBuilder) -> crate::support::TestAppBuilder,
    ) -> Self {
        let db = TestDb::create();
        let dir = tempfile::tempdir().unwrap();
        let builder = TestApp::builder()
            .set("audit.checkpoint_every_events", 10)
            // The template database may be older than any time interval: count only.
            .set("audit.checkpoint_every_secs", 86_400)
            .set("audit.checkpoint_dir", dir.path().display().to_string());
        let config = f(builder).config(&db.url);
        Fixture { db, config, dir }
    }

    fn writer(&self) -> AuditWriter {
        AuditWriter::start(
            WriterSettings::from_config(&self.config.audit, &self.config.database).unwrap(),
        )
        .unwrap()
    }

    fn checkpoint_file(&self) -> PathBuf {
        self.dir.path().join("checkpoints.jsonl")
    }

    fn verify(&self) -> Result<Verified, Failure> {
        let extra = if self.checkpoint_file().exists() {
            read_checkpoint_file(&self.checkpoint_file()).unwrap()
        } else {
            Vec::new()
        };
        let mut conn = self.db.conn();
        ops::verify_database(
            &mut conn,
            self.config.audit.chain_key().unwrap(),
            self.config.audit.signing_key().unwrap().public_key(),
            extra,
            |_| {},
        )
        .unwrap()
    }

    /// Runs SQL as the superuser with triggers disabled: what an attacker with full
    /// database access can do.
    fn tamper(&self, sql: &str) {
        let mut conn = self.db.conn();
        conn.batch_execute(&format!(
            "SET session_replication_role = replica; {sql}; SET session_replication_role = origin"
        ))
        .unwrap();
    }

    fn count(&self) -> i64 {
        #[derive(QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        diesel::sql_query("SELECT count(*) AS n FROM audit_events")
            .get_result::<N>(&mut self.db.conn())
            .unwrap()
            .n
    }

    fn head_seq(&self) -> i64 {
        store::head(&mut self.db.conn()).unwrap().seq
    }
}

fn event(i: u128) -> custodian::audit::AuditEvent {
    EventBuilder::new(
        Actor::user(
            UserId(Uuid::from_u128(i % 7 + 1)),
            vec![RoleCode::parse("clinician").unwrap()],
            AuthMethod::Bearer,
        ),
        AuditAction::Read,
        Outcome::Permit,
    )
    .resource(ResourceType::Patient, Uuid::from_u128(1000 + i))
    .patients([PatientId(Uuid::from_u128(1000 + i))])
    .purpose(PurposeOfUse::Treatment)
    .build()
}

/// Records `n` events one after the other (one event per batch, so checkpoints fall
/// exactly every 10 events).
async fn record_sequentially(w: &AuditWriter, n: u128) {
    for i in 0..n {
        w.record(event(i)).await.unwrap();
    }
}

async fn fixture_with_events(n: u128) -> Fixture {
    let f = Fixture::new();
    let w = f.writer();
    record_sequentially(&w, n).await;
    assert_eq!(f.verify().unwrap().events, n as u64);
    f
}

fn failed_at(r: Result<Verified, Failure>, seq: i64, words: &str) {
    let failure = r.expect_err("verification must fail");
    assert_eq!(failure.seq, seq, "{failure}");
    assert!(failure.problem.contains(words), "{failure}");
}

#[tokio::test]
async fn intact_chain_verifies_with_checkpoints_in_the_database_and_the_file() {
    let f = fixture_with_events(25).await;
    let ok = f.verify().unwrap();
    assert_eq!(ok.events, 25);
    assert_eq!(ok.last_checkpoint, Some(2));
    assert_eq!(ok.to_string(), "OK: 25 events, last checkpoint #2");
    let file = read_checkpoint_file(&f.checkpoint_file()).unwrap();
    assert_eq!(file.iter().map(|c| c.seq).collect::<Vec<_>>(), vec![10, 20]);
    assert_eq!(f.head_seq(), 25);
}

#[tokio::test]
async fn app_role_cannot_update_delete_or_truncate_audit_tables() {
    let f = fixture_with_events(3).await;
    let mut conn = f.db.conn();
    conn.batch_execute("SET ROLE custodian_app").unwrap();
    // What the application needs still works.
    diesel::sql_query("SELECT count(*) FROM audit_events")
        .execute(&mut conn)
        .unwrap();
    for sql in [
        "UPDATE audit_events SET action = 'delete' WHERE seq = 1",
        "DELETE FROM audit_events WHERE seq = 1",
        "TRUNCATE audit_events",
        "UPDATE audit_checkpoints SET seq = 0",
        "DELETE FROM audit_checkpoints",
        "TRUNCATE audit_checkpoints",
        "DELETE FROM audit_chain_head",
        "TRUNCATE audit_chain_head",
    ] {
        let err = conn.batch_execute(sql).unwrap_err().to_string();
        assert!(err.contains("permission denied"), "{sql}: {err}");
    }
    // The head row may move forward only, even for the app role.
    let err = conn
        .batch_execute("UPDATE audit_chain_head SET seq = 0")
        .unwrap_err()
        .to_string();
    assert!(err.contains("only moves forward"), "{err}");
    conn.batch_execute("RESET ROLE").unwrap();
    // The owner (here a superuser) is refused by the trigger.
    for sql in [
        "UPDATE audit_events SET action = 'delete' WHERE seq = 1",
        "DELETE FROM audit_events WHERE seq = 1",
        "TRUNCATE audit_events",
    ] {
        let err = conn.batch_execute(sql).unwrap_err().to_string();
        assert!(err.contains("append-only"), "{sql}: {err}");
    }
    assert_eq!(f.count(), 3);
}

/// Finding 8 of issue 18: the application role may lock and advance the chain head but
/// never rewrite it in place (its hash, its checkpoint) nor point it past or before the
/// last event.
#[tokio::test]
async fn app_role_cannot_overwrite_the_chain_head_in_place() {
    // 12 events: checkpoint #1 at 10, head at 12.
    let f = fixture_with_events(12).await;
    let mut conn = f.db.conn();
    conn.batch_execute("SET ROLE custodian_app").unwrap();
    for sql in [
        "UPDATE audit_chain_head SET hash = decode(repeat('ab', 32), 'hex')",
        // A genuine hash of the chain, but not the head's.
        "UPDATE audit_chain_head SET hash = (SELECT hash FROM audit_events WHERE seq = 11)",
        "UPDATE audit_chain_head SET checkpoint_at = now() - interval '1 day'",
        "UPDATE audit_chain_head SET checkpoint_seq = 12",
        "UPDATE audit_chain_head SET checkpoint_no = checkpoint_no + 1, checkpoint_seq = 12",
        // Advancing past the last event, with or without a plausible hash.
        "UPDATE audit_chain_head SET seq = 13, hash = decode(repeat('cd', 32), 'hex')",
        "UPDATE audit_chain_head SET seq = 13",
    ] {
        let err = conn.batch_execute(sql).unwrap_err().to_string();
        assert!(
            err.contains("append-only") || err.contains("only moves forward"),
            "{sql}: {err}"
        );
    }
    conn.batch_execute("RESET ROLE").unwrap();
    drop(conn);
    assert_eq!(f.head_seq(), 12);
    assert_eq!(f.verify().unwrap().events, 12);
    // The writer's own advancing updates (with and without a checkpoint) still pass.
    let w = f.writer();
    record_sequentially(&w, 9).await;
    let ok = f.verify().unwrap();
    assert_eq!((ok.events, ok.last_checkpoint), (21, Some(2)));
}

/// The head may only advance to the *last* event: with events appended beyond it (the
/// application role may insert), pointing the head at an earlier one — with that event's
/// genuine hash — is refused.
#[tokio::test]
async fn chain_head_cannot_stop_short_of_the_last_event() {
    let f = fixture_with_events(12).await;
    let mut conn = f.db.conn();
    conn.batch_execute("SET ROLE custodian_app").unwrap();
    conn.batch_execute(
        "INSERT INTO audit_events \
           (seq, event_id, occurred_at, actor_roles, auth_method, action, patient_ids, outcome, hash) \
         VALUES \
           (13, gen_random_uuid(), now(), '{}', 'bearer', 'read', '{}', 'permit', decode(repeat('13', 32), 'hex')), \
           (14, gen_random_uuid(), now(), '{}', 'bearer', 'read', '{}', 'permit', decode(repeat('14', 32), 'hex'))",
    )
    .unwrap();
    let sql = "UPDATE audit_chain_head SET seq = 13, hash = decode(repeat('13', 32), 'hex')";
    let err = conn.batch_execute(sql).unwrap_err().to_string();
    assert!(err.contains("append-only"), "{sql}: {err}");
    // Advancing to the last one is the writer's own move and passes.
    conn.batch_execute(
        "UPDATE audit_chain_head SET seq = 14, hash = decode(repeat('14', 32), 'hex')",
    )
    .unwrap();
    conn.batch_execute("RESET ROLE").unwrap();
    drop(conn);
    assert_eq!(f.head_seq(), 14);
}

#[tokio::test]
async fn changed_field_is_detected_at_its_position() {
    let f = fixture_with_events(25).await;
    f.tamper("UPDATE audit_events SET outcome = 'deny', deny_reason = 'policy' WHERE seq = 7");
    failed_at(f.verify(), 7, "hash mismatch");
}

#[tokio::test]
async fn row_deleted_in_the_middle_is_detected() {
    let f = fixture_with_events(25).await;
    f.tamper("DELETE FROM audit_events WHERE seq = 13");
    failed_at(f.verify(), 13, "missing");
}

#[tokio::test]
async fn rows_deleted_from_the_tail_after_a_checkpoint_are_detected() {
    let f = fixture_with_events(25).await;
    // Delete the tail, the checkpoints in the database, and roll the head back.
    f.tamper(
        "DELETE FROM audit_events WHERE seq > 15; \
         DELETE FROM audit_checkpoints WHERE seq > 15; \
         UPDATE audit_chain_head SET seq = 15, checkpoint_no = 1, checkpoint_seq = 10, \
           hash = (SELECT hash FROM audit_events WHERE seq = 15)",
    );
    // The checkpoint file (outside the database) still knows checkpoint #2 at 20.
    failed_at(f.verify(), 16, "checkpoint #2 covers sequence 20");

    // Without rolling the head back, the head alone catches it.
    let g = fixture_with_events(25).await;
    g.tamper("DELETE FROM audit_events WHERE seq > 22");
    failed_at(g.verify(), 23, "deleted from the tail");
}

#[tokio::test]
async fn swapped_rows_are_detected() {
    let f = fixture_with_events(25).await;
    f.tamper(
        "UPDATE audit_events SET seq = 1005 WHERE seq = 5; \
         UPDATE audit_events SET seq = 5 WHERE seq = 6; \
         UPDATE audit_events SET seq = 6 WHERE seq = 1005",
    );
    failed_at(f.verify(), 5, "hash mismatch");
}

#[tokio::test]
async fn chain_recomputed_with_the_key_is_caught_by_the_checkpoint_signature() {
    let f = fixture_with_events(25).await;
    f.tamper("UPDATE audit_events SET action = 'search' WHERE seq = 3");
    // The attacker knows the chain key and recomputes every hash and the head.
    let key = f.config.audit.chain_key().unwrap();
    let mut conn = f.db.conn();
    conn.batch_execute("SET session_replication_role = replica")
        .unwrap();
    let mut prev = chain::GENESIS;
    for row in store::events_after(&mut conn, 0, 1000).unwrap() {
        let (record, _) = row.into_parts();
        let hash = key.link(&prev, &record);
        diesel::sql_query("UPDATE audit_events SET hash = $1 WHERE seq = $2")
            .bind::<diesel::sql_types::Bytea, _>(hash.to_vec())
            .bind::<diesel::sql_types::BigInt, _>(record.seq)
            .execute(&mut conn)
            .unwrap();
        prev = hash;
    }
    diesel::sql_query("UPDATE audit_chain_head SET hash = $1")
        .bind::<diesel::sql_types::Bytea, _>(prev.to_vec())
        .execute(&mut conn)
        .unwrap();
    failed_at(f.verify(), 10, "checkpoint #1 does not match");

    // Re-pointing the stored checkpoint at the new hash breaks its signature.
    let cp1_hash = store::events_after(&mut conn, 9, 1).unwrap()[0]
        .hash
        .clone();
    diesel::sql_query("UPDATE audit_checkpoints SET head_hash = $1 WHERE checkpoint_no = 1")
        .bind::<diesel::sql_types::Bytea, _>(cp1_hash)
        .execute(&mut conn)
        .unwrap();
    failed_at(f.verify(), 10, "invalid signature");
}

#[tokio::test]
async fn forged_row_is_detected() {
    let f = fixture_with_events(25).await;
    f.tamper(
        "INSERT INTO audit_events (seq, event_id, occurred_at, actor_roles, auth_method, action, \
           patient_ids, outcome, hash) \
         VALUES (26, gen_random_uuid(), now(), '{}', 'none', 'read', '{}', 'permit', \
           decode(repeat('ab', 32), 'hex'))",
    );
    failed_at(f.verify(), 26, "hash mismatch");
}

/// A handler written the way PHI handlers will be: audit, then respond.
async fn audited(ctx: AuditContext, state: web::Data<AppState>) -> Result<HttpResponse, AppError> {
    let patient = PatientId(Uuid::from_u128(42));
    let event = ctx
        .event(Actor::anonymous(), AuditAction::Search, Outcome::Permit)
        .resource_type(ResourceType::Patient)
        .patients([patient])
        .purpose(PurposeOfUse::Treatment)
        .build();
    state.audit.record(event).await?;
    Ok(HttpResponse::Ok().body("pretend PHI"))
}

fn audit_routes(r: &mut Routes) {
    r.add(Method::GET, "/fhir/test/audited", Action::Public, audited);
    r.add(Method::POST, "/fhir/test/audited", Action::Public, audited);
}

#[tokio::test]
async fn audit_failure_fails_closed_and_the_head_does_not_advance() {
    let app = TestApp::builder()
        .set("audit.commit_timeout_ms", 1500)
        .extra_routes(audit_routes)
        .spawn()
        .await;
    assert_eq!(app.get("/fhir/test/audited").await.status(), 200);
    let mut conn = app.db.conn();
    let head_before = store::head(&mut conn).unwrap();
    assert_eq!(head_before.seq, 1);

    conn.batch_execute("ALTER TABLE audit_events RENAME TO audit_events_moved")
        .unwrap();
    let res = app.get("/fhir/test/audited").await;
    assert_eq!(res.status(), 503);
    let body = res.text().await.unwrap();
    assert!(!body.contains("pretend PHI"), "{body}");
    assert!(!body.contains("audit_events"), "{body}");
    let head_after = store::head(&mut conn).unwrap();
    assert_eq!(head_after.seq, head_before.seq);
    assert_eq!(head_after.hash, head_before.hash);

    conn.batch_execute("ALTER TABLE audit_events_moved RENAME TO audit_events")
        .unwrap();
    assert_eq!(app.get("/fhir/test/audited").await.status(), 200);
    let key = chain::ChainKey::new(key_bytes(TEST_CHAIN_KEY));
    let public = chain::CheckpointSigner::from_seed(key_bytes(TEST_SIGNING_KEY)).public_key();
    let ok = ops::verify_database(&mut conn, key, public, Vec::new(), |_| {})
        .unwrap()
        .unwrap();
    assert_eq!(ok.events, 2);
}

fn key_bytes(b64: &str) -> [u8; 32] {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
        .try_into()
        .unwrap()
}

#[tokio::test]
async fn events_never_contain_phi_given_to_the_request() {
    let app = TestApp::builder().extra_routes(audit_routes).spawn().await;
    let res = app
        .client
        .post(app.url("/fhir/test/audited?name=CANARY-Jane-Doe&mrn=CANARY-MRN-991"))
        .header("x-patient-name", "CANARY-Jane-Doe")
        .header("user-agent", "test-agent/1.0\tCANARY-Jane-Doe 123-45-6789")
        .body("{\"name\":\"CANARY-Jane-Doe\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let request_id = res.headers()["x-request-id"].to_str().unwrap().to_string();
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        t: String,
    }
    let rows: Vec<Row> = diesel::sql_query(
        "SELECT row_to_json(e)::text AS t FROM audit_events e \
         UNION ALL SELECT row_to_json(c)::text FROM audit_checkpoints c",
    )
    .load(&mut app.db.conn())
    .unwrap();
    let all: String = rows.iter().map(|r| r.t.as_str()).collect();
    assert_eq!(all.matches("CANARY").count(), 0, "{all}");
    assert!(all.contains(&request_id), "{all}");
    // The agent's class only: the header is free text the caller controls.
    assert!(all.contains("\"user_agent\":\"other\""), "{all}");
    assert!(
        !all.contains("test-agent") && !all.contains("123-45-6789"),
        "{all}"
    );
    assert!(all.contains("127.0.0.1"), "{all}");
}

#[tokio::test]
async fn three_writers_build_one_gapless_chain() {
    let f = Fixture::with(|b| {
        b.set("audit.checkpoint_every_events", 500)
            .set("audit.batch_max", 64)
    });
    let writers: Vec<AuditWriter> = (0..3).map(|_| f.writer()).collect();
    let per_writer = 1200u128;
    let mut tasks = Vec::new();
    for (w, writer) in writers.iter().enumerate() {
        for p in 0..24u128 {
            let writer = writer.clone();
            tasks.push(tokio::spawn(async move {
                let mut i = p;
                while i < per_writer {
                    writer.record(event(w as u128 * 10_000 + i)).await.unwrap();
                    i += 24;
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let total = 3 * per_writer as i64;
    assert_eq!(f.count(), total);
    let ok = f.verify().unwrap();
    assert_eq!(ok.events, total as u64);
    assert!(ok.last_checkpoint.is_some());
    let batched: u64 = writers.iter().map(|w| w.stats().batches).sum();
    assert!(batched < total as u64, "events were grouped into batches");
}

fn cli(args: &[&str], f: &Fixture) -> (bool, String, String) {
    let dir = f.dir.path().to_string_lossy();
    let out = crate::support::cli::custodian(
        args,
        &[
            ("DATABASE_URL", &f.db.url),
            ("CUSTODIAN_AUDIT_CHAIN_KEY", TEST_CHAIN_KEY),
            ("CUSTODIAN_AUDIT_CHECKPOINT_SIGNING_KEY", TEST_SIGNING_KEY),
            ("CUSTODIAN_AUDIT_CHECKPOINT_DIR", &dir),
            ("CUSTODIAN_AUDIT_CHECKPOINT_EVERY_SECS", "86400"),
        ],
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test]
async fn verify_command_prints_one_verdict_and_sets_the_exit_code() {
    let f = fixture_with_events(25).await;
    let (ok, out, err) = cli(&["audit", "verify"], &f);
    assert!(ok, "{out}{err}");
    assert_eq!(out.trim(), "OK: 25 events, last checkpoint #2");

    f.tamper("UPDATE audit_events SET resource_id = gen_random_uuid() WHERE seq = 18");
    let (ok, out, _) = cli(&["audit", "verify"], &f);
    assert!(!ok);
    assert!(
        out.trim()
            .starts_with("FAILED at sequence 18: hash mismatch"),
        "{out}"
    );
}

#[tokio::test]
async fn export_verifies_offline_and_an_edited_export_does_not() {
    let f = fixture_with_events(25).await;
    let export = f.dir.path().join("export.jsonl");
    let (ok, out, err) = cli(
        &[
            "audit",
            "export",
            "--since",
            "2000-01-01",
            "--output",
            export.to_str().unwrap(),
        ],
        &f,
    );
    assert!(ok, "{out}{err}");
    // The export itself was audited first (event 26), and is part of the export.
    assert!(out.contains("exported 26 events"), "{out}");

    let (ok, public, _) = cli(&["audit", "public-key"], &f);
    assert!(ok);
    // Offline: no database at all, only the keys.
    let offline = |file: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_custodian"))
            .args([
                "audit",
                "verify",
                "--file",
                file.to_str().unwrap(),
                "--public-key",
                public.trim(),
            ])
            .env_clear()
            .env("CUSTODIAN_AUDIT_CHAIN_KEY", TEST_CHAIN_KEY)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    let (ok, out) = offline(&export);
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "OK: 26 events, last checkpoint #2");

    // A range in the middle verifies from the hash preceding it.
    let mut conn = f.db.conn();
    let mut buf = Vec::new();
    let header = ops::export(&mut conn, None, None, &mut buf).unwrap();
    assert_eq!(header.count, 26);

    let text = std::fs::read_to_string(&export).unwrap();
    let edited = text.replacen("\"action\":\"read\"", "\"action\":\"delete\"", 1);
    assert_ne!(edited, text);
    let edited_path = f.dir.path().join("edited.jsonl");
    std::fs::write(&edited_path, edited).unwrap();
    let (ok, out) = offline(&edited_path);
    assert!(!ok);
    assert!(
        out.starts_with("FAILED at sequence 1: hash mismatch"),
        "{out}"
    );

    // Dropping the last events of the export is noticed too.
    let lines: Vec<&str> = text.lines().collect();
    let cut_path = f.dir.path().join("cut.jsonl");
    std::fs::write(&cut_path, lines[..lines.len() - 3].join("\n")).unwrap();
    let (ok, out) = offline(&cut_path);
    assert!(!ok);
    assert!(out.starts_with("FAILED at sequence 24"), "{out}");
}

#[tokio::test]
async fn checkpoint_of_another_key_is_refused() {
    let f = fixture_with_events(12).await;
    let other = chain::CheckpointSigner::from_seed([3u8; 32]);
    let forged: Checkpoint = other.sign(9, 12, [0u8; 32], chrono::Utc::now());
    let mut conn = f.db.conn();
    let r = ops::verify_database(
        &mut conn,
        f.config.audit.chain_key().unwrap(),
        f.config.audit.signing_key().unwrap().public_key(),
        vec![forged],
        |_| {},
    )
    .unwrap();
    failed_at(r, 12, "different key");
}
