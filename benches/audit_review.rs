//! Audit review at scale: bulk-loads BENCH_REVIEW_EVENTS (default 10,000,000) synthetic
//! events spread over one year straight into `audit_events` with `generate_series` (no
//! HTTP, no writer: the rows carry a placeholder hash, so this chain does not verify —
//! the review queries never read the hash), then times the console's queries
//! (`audit::search`) on the loaded table:
//!
//! - one person, last 30 days, first page (target < 300 ms);
//! - one patient, last 30 days, first page (target < 300 ms);
//! - one patient's access report over the year (target < 1 s).
//!
//! Run with `cargo bench --bench audit_review`. Uses CUSTODIAN_BENCH_DATABASE_URL (or
//! DATABASE_URL): an admin URL on which a throwaway database is created and dropped
//! (BENCH_KEEP=1 keeps it). Data: 2,000 people, 200,000 patients; 60 % reads, 20 %
//! searches naming 10 patients each, 20 % creates and updates; 2 % denied.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use custodian::audit::search::{self, Cursor, Filter};
use custodian::domain::{PatientId, UserId};
use diesel::prelude::*;
use std::time::{Duration, Instant};
use uuid::Uuid;

const PEOPLE: u64 = 2_000;
const PATIENTS: u64 = 200_000;
const CHUNK: u64 = 500_000;

fn person(n: u64) -> Uuid {
    Uuid::parse_str(&format!("00000000-0000-4000-8000-{n:012x}")).unwrap()
}

fn patient(n: u64) -> Uuid {
    Uuid::parse_str(&format!("00000000-0000-4000-9000-{n:012x}")).unwrap()
}

/// The SQL that loads events `lo..=hi` of `total`, the last one at `end`.
fn load_sql(lo: u64, hi: u64, total: u64) -> String {
    // Person and patient of event g: spread by multiplying with primes.
    let pid = |x: &str| {
        format!(
            "('00000000-0000-4000-9000-' || lpad(to_hex((({x}) * 7919) % {PATIENTS}), 12, '0'))::uuid"
        )
    };
    format!(
        "INSERT INTO audit_events (seq, event_id, occurred_at, actor_user_id, actor_roles, \
           auth_method, action, resource_type, resource_id, patient_ids, outcome, deny_reason, \
           purpose_of_use, source_ip, hash) \
         SELECT g, gen_random_uuid(), \
           now() - interval '365 days' + (g::float8 / {total}) * interval '365 days', \
           ('00000000-0000-4000-8000-' || lpad(to_hex((g * 104729) % {PEOPLE}), 12, '0'))::uuid, \
           ARRAY['clinician'], 'bearer', \
           CASE WHEN g % 10 < 6 THEN 'read' WHEN g % 10 < 8 THEN 'search' \
                WHEN g % 10 = 8 THEN 'create' ELSE 'update' END, \
           'Patient', NULL, \
           CASE WHEN g % 10 IN (6, 7) THEN ARRAY(SELECT {many} FROM generate_series(0, 9) k) \
                ELSE ARRAY[{one}] END, \
           CASE WHEN g % 50 = 0 THEN 'deny' ELSE 'permit' END, \
           CASE WHEN g % 50 = 0 THEN 'no-relationship' END, \
           'TREAT', '10.0.' || (g % 250) || '.' || (g % 200), \
           decode(repeat('00', 32), 'hex') \
         FROM generate_series({lo}::bigint, {hi}::bigint) g",
        many = pid("g * 13 + k"),
        one = pid("g"),
    )
}

fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, Duration, T) {
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..runs {
        let t = Instant::now();
        last = Some(f());
        times.push(t.elapsed());
    }
    let first = times[0];
    times.sort();
    (first, times[times.len() / 2], last.unwrap())
}

fn main() {
    let total: u64 = std::env::var("BENCH_REVIEW_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let admin = std::env::var("CUSTODIAN_BENCH_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .expect("CUSTODIAN_BENCH_DATABASE_URL: an admin URL of a PostgreSQL server");
    let name = format!("custodian_review_bench_{}", std::process::id());
    let mut admin_conn = PgConnection::establish(&admin).unwrap();
    diesel::sql_query(format!("CREATE DATABASE \"{name}\""))
        .execute(&mut admin_conn)
        .unwrap();
    let mut url = url::Url::parse(&admin).unwrap();
    url.set_path(&format!("/{name}"));
    let url = url.to_string();
    custodian::db::migrate(&url, 5).unwrap();
    let mut conn = PgConnection::establish(&url).unwrap();

    // Load without the secondary indexes, then build them from their own definitions
    // (exactly what the migrations created).
    #[derive(QueryableByName)]
    struct Index {
        #[diesel(sql_type = diesel::sql_types::Text)]
        indexname: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        indexdef: String,
    }
    let indexes: Vec<Index> = diesel::sql_query(
        "SELECT indexname::text, indexdef FROM pg_indexes \
         WHERE tablename = 'audit_events' AND indexname <> 'audit_events_pkey'",
    )
    .load(&mut conn)
    .unwrap();
    for i in &indexes {
        diesel::sql_query(format!(
            "ALTER TABLE audit_events DROP CONSTRAINT IF EXISTS \"{}\"",
            i.indexname
        ))
        .execute(&mut conn)
        .unwrap();
        diesel::sql_query(format!("DROP INDEX IF EXISTS \"{}\"", i.indexname))
            .execute(&mut conn)
            .unwrap();
    }
    let started = Instant::now();
    let mut lo = 1;
    while lo <= total {
        let hi = (lo + CHUNK - 1).min(total);
        diesel::sql_query(load_sql(lo, hi, total))
            .execute(&mut conn)
            .unwrap();
        eprintln!(
            "  loaded {hi} events ({:.0} s)",
            started.elapsed().as_secs_f64()
        );
        lo = hi + 1;
    }
    let loaded = started.elapsed();
    let started = Instant::now();
    diesel::sql_query("SET maintenance_work_mem = '256MB'")
        .execute(&mut conn)
        .unwrap();
    for i in &indexes {
        diesel::sql_query(&i.indexdef).execute(&mut conn).unwrap();
    }
    diesel::sql_query("VACUUM ANALYZE audit_events")
        .execute(&mut conn)
        .unwrap();
    let indexed = started.elapsed();
    println!(
        "audit review: {total} events loaded in {:.0} s, indexed and analysed in {:.0} s",
        loaded.as_secs_f64(),
        indexed.as_secs_f64()
    );

    let now = chrono::Utc::now();
    let month = Filter {
        since: Some(now - chrono::Duration::days(30)),
        ..Filter::default()
    };
    let report = |what: &str, first: Duration, median: Duration, n: usize, target_ms: u64| {
        println!(
            "  {what}: first run {:.1} ms, median of 5 {:.1} ms ({n} rows; target < {target_ms} ms)",
            first.as_secs_f64() * 1e3,
            median.as_secs_f64() * 1e3
        );
    };
    let who = UserId(person(17));
    let f = Filter {
        actor: Some(who),
        ..month.clone()
    };
    let (first, median, page) = time(5, || {
        search::search(&mut conn, &f, Cursor::Newest, 50).unwrap()
    });
    report(
        "one person, 30 days, first page",
        first,
        median,
        page.rows.len(),
        300,
    );
    let whom = PatientId(patient(4242));
    let f = Filter {
        patient: Some(whom),
        ..month.clone()
    };
    let (first, median, page) = time(5, || {
        search::search(&mut conn, &f, Cursor::Newest, 50).unwrap()
    });
    report(
        "one patient, 30 days, first page",
        first,
        median,
        page.rows.len(),
        300,
    );
    let (first, median, rows) = time(5, || {
        search::patient_accesses(
            &mut conn,
            whom,
            now - chrono::Duration::days(366),
            now,
            10_001,
        )
        .unwrap()
    });
    report(
        "one patient's access report, one year",
        first,
        median,
        rows.len(),
        1000,
    );
    drop(conn);
    if std::env::var("BENCH_KEEP").is_err() {
        diesel::sql_query(format!("DROP DATABASE \"{name}\" WITH (FORCE)"))
            .execute(&mut admin_conn)
            .unwrap();
    } else {
        println!("  kept database {name}");
    }
}
