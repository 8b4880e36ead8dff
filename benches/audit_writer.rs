//! Group-commit audit writer benchmark: 64 concurrent producers against PostgreSQL,
//! then `audit verify` throughput. Run with `cargo bench --bench audit_writer`.
//!
//! Uses CUSTODIAN_BENCH_DATABASE_URL (or DATABASE_URL): an admin URL on which a
//! throwaway database is created and dropped; otherwise a throwaway cluster under
//! target/. Environment: BENCH_EVENTS (default 200000), BENCH_PRODUCERS (default 64).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use custodian::audit::config::AuditConfig;
use custodian::audit::{
    Actor, AuditAction, AuditWriter, AuthMethod, EventBuilder, Outcome, PurposeOfUse, ResourceType,
    RoleCode, WriterSettings, ops,
};
use custodian::db::config::DatabaseConfig;
use custodian::domain::{PatientId, UserId};
use custodian::secret::Secret;
use diesel::prelude::*;
use std::time::{Duration, Instant};
use uuid::Uuid;

fn admin_url() -> (String, Option<custodian::dev::pgcluster::LocalCluster>) {
    if let Ok(url) =
        std::env::var("CUSTODIAN_BENCH_DATABASE_URL").or_else(|_| std::env::var("DATABASE_URL"))
    {
        return (url, None);
    }
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-pg");
    let cluster = custodian::dev::pgcluster::LocalCluster::new(&root, None, true).unwrap();
    cluster.init_if_needed().unwrap();
    cluster.start().unwrap();
    (cluster.url("postgres"), Some(cluster))
}

fn main() {
    let events: usize = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let producers: usize = std::env::var("BENCH_PRODUCERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let (admin, cluster) = admin_url();
    let name = format!("custodian_bench_{}", std::process::id());
    let mut admin_conn = PgConnection::establish(&admin).unwrap();
    diesel::sql_query(format!("CREATE DATABASE \"{name}\""))
        .execute(&mut admin_conn)
        .unwrap();
    let mut url = url::Url::parse(&admin).unwrap();
    url.set_path(&format!("/{name}"));
    let url = url.to_string();
    custodian::db::migrate(&url, 5).unwrap();

    let audit = AuditConfig {
        chain_key: Some(Secret::new(
            "YmVuY2gtY2hhaW4ta2V5LTMyLWJ5dGVzLWxvbmctLS0=".into(),
        )),
        checkpoint_signing_key: Some(Secret::new(
            "YmVuY2gtc2lnbmluZy1zZWVkLTMyLWJ5dGVzLS0tLS0=".into(),
        )),
        ..AuditConfig::default()
    };
    let settings = WriterSettings::from_config(&audit, &DatabaseConfig::new(url.clone())).unwrap();
    let writer = AuditWriter::start(settings).unwrap();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Warm up the connection.
    rt.block_on(writer.record(event(0))).unwrap();
    let started = Instant::now();
    let latencies: Vec<Duration> = rt.block_on(async {
        let per = events / producers;
        let mut tasks = Vec::new();
        for p in 0..producers {
            let w = writer.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per);
                for i in 0..per {
                    let t = Instant::now();
                    w.record(event((p * per + i) as u128)).await.unwrap();
                    lat.push(t.elapsed());
                }
                lat
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    });
    let elapsed = started.elapsed();
    let mut lat = latencies;
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    let stats = writer.stats();
    println!(
        "audit writer: {} events from {producers} producers in {:.2} s",
        lat.len(),
        elapsed.as_secs_f64()
    );
    println!(
        "  throughput: {:.0} events/s",
        lat.len() as f64 / elapsed.as_secs_f64()
    );
    println!(
        "  latency per record: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        lat[lat.len() - 1].as_secs_f64() * 1e3
    );
    println!(
        "  batches: {} (mean {:.1} events, largest {}), failed {}",
        stats.batches,
        stats.events as f64 / stats.batches.max(1) as f64,
        stats.largest_batch,
        stats.failed_batches
    );
    drop(writer);

    let mut conn = PgConnection::establish(&url).unwrap();
    let started = Instant::now();
    let verified = ops::verify_database(
        &mut conn,
        audit.chain_key().unwrap(),
        audit.signing_key().unwrap().public_key(),
        Vec::new(),
        |_| {},
    )
    .unwrap()
    .unwrap();
    let elapsed = started.elapsed();
    println!(
        "audit verify: {verified} in {:.2} s = {:.0} events/s",
        elapsed.as_secs_f64(),
        verified.events as f64 / elapsed.as_secs_f64()
    );

    drop(conn);
    diesel::sql_query(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&mut admin_conn)
        .unwrap();
    if let Some(c) = cluster {
        c.stop().unwrap();
    }
}

fn event(i: u128) -> custodian::audit::AuditEvent {
    EventBuilder::new(
        Actor::user(
            UserId(Uuid::from_u128(i % 97 + 1)),
            vec![RoleCode::parse("clinician").unwrap()],
            AuthMethod::Bearer,
        ),
        AuditAction::Read,
        Outcome::Permit,
    )
    .resource(ResourceType::Patient, Uuid::from_u128(1_000_000 + i))
    .patients([PatientId(Uuid::from_u128(1_000_000 + i))])
    .purpose(PurposeOfUse::Treatment)
    .build()
}
