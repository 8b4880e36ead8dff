//! Detector throughput: bulk-loads BENCH_DETECT_EVENTS (default 1,000,000) synthetic audit
//! events straight into `audit_events` with `generate_series` (placeholder hashes: the
//! detectors never read them), 200,000 patients (1 % restricted, 0.5 % very restricted,
//! each with two care-team members) and 2,000 people, then times the detectors' runner
//! (`detect::Detector::pass`, the code the server runs) from cursor 0 to the head.
//!
//! Every 50th person shares a family-name index with every 500th patient, and half the
//! people work at a facility with its own hours and time zone, so the same-family-name
//! and off-hours detectors do their real work.
//!
//! Events: 60 % reads, 20 % searches naming 10 patients each, 20 % creates and updates,
//! 2 % refused for lack of a relationship, 1 % refused 401 from 250 addresses; spread
//! over the last 24 hours. Target: ≥ 20,000 events/s on 2 cores.
//!
//! Run with `cargo bench --bench detect`. Uses CUSTODIAN_BENCH_DATABASE_URL (or
//! DATABASE_URL): an admin URL on which a throwaway database is created and dropped
//! (BENCH_KEEP=1 keeps it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use custodian::detect::Detector;
use custodian::detect::config::DetectConfig;
use diesel::prelude::*;
use std::time::Instant;

const PEOPLE: u64 = 2_000;
const PATIENTS: u64 = 200_000;
const CHUNK: u64 = 500_000;

fn uuid_sql(prefix: &str, x: &str, modulo: u64) -> String {
    format!("('{prefix}' || lpad(to_hex(({x}) % {modulo}), 12, '0'))::uuid")
}

fn events_sql(lo: u64, hi: u64, total: u64) -> String {
    let patient = |x: &str| {
        uuid_sql(
            "00000000-0000-4000-9000-",
            &format!("({x}) * 7919"),
            PATIENTS,
        )
    };
    format!(
        "INSERT INTO audit_events (seq, event_id, occurred_at, actor_user_id, actor_roles, \
           auth_method, action, resource_type, patient_ids, outcome, deny_reason, source_ip, hash) \
         SELECT g, gen_random_uuid(), \
           now() - interval '1 day' + (g::float8 / {total}) * interval '1 day', \
           CASE WHEN g % 100 = 1 THEN NULL ELSE {person} END, \
           ARRAY['clinician'], 'bearer', \
           CASE WHEN g % 10 < 6 THEN 'read' WHEN g % 10 < 8 THEN 'search' \
                WHEN g % 10 = 8 THEN 'create' ELSE 'update' END, \
           'Patient', \
           CASE WHEN g % 100 = 1 THEN ARRAY[]::uuid[] \
                WHEN g % 10 IN (6, 7) THEN ARRAY(SELECT {many} FROM generate_series(0, 9) k) \
                ELSE ARRAY[{one}] END, \
           CASE WHEN g % 50 = 0 OR g % 100 = 1 THEN 'deny' ELSE 'permit' END, \
           CASE WHEN g % 50 = 0 THEN 'no-relationship' \
                WHEN g % 100 = 1 THEN 'invalid-credentials' END, \
           '10.0.' || (g % 250) || '.' || (g % 200), \
           decode(repeat('00', 32), 'hex') \
         FROM generate_series({lo}::bigint, {hi}::bigint) g",
        person = uuid_sql("00000000-0000-4000-8000-", "g * 104729", PEOPLE),
        many = patient("g * 13 + k"),
        one = patient("g"),
    )
}

fn exec(conn: &mut PgConnection, sql: &str) {
    diesel::sql_query(sql).execute(conn).unwrap();
}

fn main() {
    let total: u64 = std::env::var("BENCH_DETECT_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let admin = std::env::var("CUSTODIAN_BENCH_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .expect("CUSTODIAN_BENCH_DATABASE_URL: an admin URL of a PostgreSQL server");
    let name = format!("custodian_detect_bench_{}", std::process::id());
    let mut admin_conn = PgConnection::establish(&admin).unwrap();
    exec(&mut admin_conn, &format!("CREATE DATABASE \"{name}\""));
    let mut url = url::Url::parse(&admin).unwrap();
    url.set_path(&format!("/{name}"));
    let url = url.to_string();
    custodian::db::migrate(&url, 5).unwrap();
    let mut conn = PgConnection::establish(&url).unwrap();

    let started = Instant::now();
    exec(
        &mut conn,
        "INSERT INTO facilities (id, name) VALUES ('00000000-0000-4000-a000-000000000001', 'Bench')",
    );
    let person = uuid_sql("00000000-0000-4000-8000-", "g", PEOPLE);
    exec(
        &mut conn,
        &format!(
            "INSERT INTO users (id, issuer, subject, kind) \
             SELECT {person}, 'https://bench', 'p' || g, 'person' FROM generate_series(0, {}) g",
            PEOPLE - 1
        ),
    );
    let patient = uuid_sql("00000000-0000-4000-9000-", "g", PATIENTS);
    let b = "decode(repeat('00', 16), 'hex')";
    exec(
        &mut conn,
        &format!(
            "INSERT INTO patients (id, key_version, facility_id, mrn_sealed, mrn_index, \
               family_sealed, family_index, given_sealed, given_index, birth_date_sealed, \
               birth_date_index, gender, confidentiality) \
             SELECT {patient}, 1, '00000000-0000-4000-a000-000000000001', {b}, \
               decode(lpad(to_hex(g), 32, '0'), 'hex'), {b}, {b}, {b}, {b}, {b}, {b}, 'other', \
               CASE WHEN g % 200 = 0 THEN 'V' WHEN g % 100 = 0 THEN 'R' ELSE 'N' END \
             FROM generate_series(0, {}) g",
            PATIENTS - 1
        ),
    );
    exec(
        &mut conn,
        &format!(
            "INSERT INTO care_team_members (patient_id, user_id) \
             SELECT {patient}, {p1} FROM generate_series(0, {n}) g \
             UNION SELECT {patient}, {p2} FROM generate_series(0, {n}) g",
            p1 = uuid_sql("00000000-0000-4000-8000-", "g * 31", PEOPLE),
            p2 = uuid_sql("00000000-0000-4000-8000-", "g * 37 + 1", PEOPLE),
            n = PATIENTS - 1
        ),
    );
    // Facts of the newer detectors: every 50th person shares a family-name index with
    // every 500th patient (same-family-name), and half the people work at a facility in
    // New York from 08:00 to 18:00 (off-hours; the rest use the UTC defaults).
    let shared = "decode(repeat('ab', 32), 'hex')";
    exec(
        &mut conn,
        &format!(
            "UPDATE users SET family_index = {shared}, family_index_source = 'admin' \
             WHERE ('x' || right(id::text, 8))::bit(32)::int % 50 = 0"
        ),
    );
    exec(
        &mut conn,
        &format!(
            "UPDATE patients SET family_index = {shared} \
             WHERE ('x' || right(id::text, 8))::bit(32)::int % 500 = 0"
        ),
    );
    exec(
        &mut conn,
        "UPDATE facilities SET work_start_hour = 8, work_end_hour = 18, \
           time_zone = 'America/New_York'",
    );
    exec(
        &mut conn,
        "UPDATE users SET facility_id = '00000000-0000-4000-a000-000000000001' \
         WHERE ('x' || right(id::text, 8))::bit(32)::int % 2 = 0",
    );
    let mut lo = 1;
    while lo <= total {
        let hi = (lo + CHUNK - 1).min(total);
        exec(&mut conn, &events_sql(lo, hi, total));
        lo = hi + 1;
    }
    exec(
        &mut conn,
        &format!("UPDATE audit_chain_head SET seq = {total}"),
    );
    exec(&mut conn, "VACUUM ANALYZE");
    println!(
        "detect: {total} events, {PATIENTS} patients, {PEOPLE} people loaded in {:.0} s",
        started.elapsed().as_secs_f64()
    );

    // The first run meets a cold cache (the data was just loaded), so batch 2,000 runs
    // again once warm. The last run leaves bulk-access out (its minimum out of reach): the
    // difference is what the baseline queries cost.
    for (batch_max, bulk) in [(2_000, true), (10_000, true), (2_000, true), (2_000, false)] {
        exec(&mut conn, "DELETE FROM alerts");
        exec(&mut conn, "UPDATE detector_cursor SET seq = 0");
        let cfg = DetectConfig {
            batch_max,
            bulk_min_patients: if bulk { 50 } else { u32::MAX },
            ..DetectConfig::default()
        };
        let mut d = Detector::new(cfg);
        let started = Instant::now();
        let mut consumed = 0usize;
        let mut raised = 0usize;
        loop {
            let pass = d.pass(&mut conn, chrono::Utc::now()).unwrap();
            consumed += pass.consumed;
            raised += pass.raised.len();
            if pass.consumed == 0 {
                break;
            }
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "  batch {batch_max}{}: {consumed} events in {secs:.1} s = {:.0} events/s, {raised} alerts (target ≥ 20,000 events/s)",
            if bulk { "" } else { ", bulk-access off" },
            consumed as f64 / secs
        );
    }

    drop(conn);
    if std::env::var("BENCH_KEEP").is_err() {
        exec(
            &mut admin_conn,
            &format!("DROP DATABASE \"{name}\" WITH (FORCE)"),
        );
    }
}
