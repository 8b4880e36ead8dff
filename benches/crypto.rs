//! `cargo bench --bench crypto`: per-field seal/open cost (64-byte value) and the
//! re-encryption rate of `keys rotate` on 100,000 patient rows in PostgreSQL
//! (CUSTODIAN_BENCH_DATABASE_URL or DATABASE_URL as an admin URL; otherwise a throwaway
//! cluster). `BENCH_ROWS` overrides the row count.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::Engine;
use custodian::crypto::config::CryptoConfig;
use custodian::crypto::rotation::{self, RotateOptions};
use custodian::crypto::{BlindKind, Keyring};
use custodian::db::schema::{facilities, patients};
use custodian::secret::Secret;
use diesel::prelude::*;
use std::hint::black_box;
use std::time::Instant;
use uuid::Uuid;

fn main() {
    field_costs();
    rotation_rate();
}

fn field_costs() {
    let kr = Keyring::ephemeral(1);
    let place = custodian::crypto::columns::patients::FAMILY.at(Uuid::new_v4());
    let value = [0x5au8; 64];
    let n = 200_000;
    for _ in 0..10_000 {
        black_box(kr.seal(&place, &value).unwrap());
    }
    let started = Instant::now();
    let mut sealed = Vec::new();
    for _ in 0..n {
        sealed = black_box(kr.seal(black_box(&place), black_box(&value)).unwrap());
    }
    let seal_ns = started.elapsed().as_nanos() as f64 / n as f64;
    let started = Instant::now();
    for _ in 0..n {
        black_box(kr.open(black_box(&place), black_box(&sealed)).unwrap());
    }
    let open_ns = started.elapsed().as_nanos() as f64 / n as f64;
    let started = Instant::now();
    for _ in 0..n {
        black_box(
            kr.blind_index(BlindKind::Mrn, black_box("MRN-0012345"))
                .unwrap(),
        );
    }
    let index_ns = started.elapsed().as_nanos() as f64 / n as f64;
    println!(
        "seal  64-byte field: {:>8.0} ns/op ({:.2} µs; target <= 2 µs)",
        seal_ns,
        seal_ns / 1000.0
    );
    println!(
        "open  64-byte field: {:>8.0} ns/op ({:.2} µs; target <= 2 µs)",
        open_ns,
        open_ns / 1000.0
    );
    println!("blind index (MRN):   {:>8.0} ns/op", index_ns);
}

fn random_key() -> String {
    base64::engine::general_purpose::STANDARD
        .encode(custodian::crypto::keyring::generate_key().as_ref())
}

fn rotation_rate() {
    let rows: usize = std::env::var("BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let tmp;
    let mut cluster = None;
    let admin = match std::env::var("CUSTODIAN_BENCH_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
    {
        Ok(url) => url,
        Err(_) => {
            tmp = tempfile::tempdir().unwrap();
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let c = custodian::dev::pgcluster::LocalCluster::new(tmp.path(), Some(port), false)
                .unwrap();
            c.init_if_needed().unwrap();
            c.start().unwrap();
            let url = c.url("postgres");
            cluster = Some(c);
            url
        }
    };
    let name = format!("custodian_bench_{}", std::process::id());
    custodian::dev::pgcluster::create_database_if_missing(&admin, &name).unwrap();
    let mut url = url::Url::parse(&admin).unwrap();
    url.set_path(&format!("/{name}"));
    let url = url.to_string();
    custodian::db::migrate(&url, 5).unwrap();

    let cfg = CryptoConfig {
        kek: Some(Secret::new(random_key())),
        rotation_kek: None,
        blind_index_key: Some(Secret::new(random_key())),
        export_key: None,
    };
    let kr = custodian::app::keys::load_keyring(&cfg, &url, 5).unwrap();
    let mut conn = PgConnection::establish(&url).unwrap();
    let facility = Uuid::new_v4();
    diesel::insert_into(facilities::table)
        .values((facilities::id.eq(facility), facilities::name.eq("Bench")))
        .execute(&mut conn)
        .unwrap();

    let started = Instant::now();
    let sealer = kr.sealer().unwrap();
    let date = chrono::NaiveDate::from_ymd_opt(1980, 1, 1).unwrap();
    for chunk in (0..rows).collect::<Vec<_>>().chunks(1000) {
        let values: Vec<_> = chunk
            .iter()
            .map(|i| {
                let id = Uuid::new_v4();
                let p = |c: custodian::crypto::columns::SealedColumn| c.at(id);
                (
                    patients::id.eq(id),
                    patients::key_version.eq(sealer.version()),
                    patients::facility_id.eq(facility),
                    patients::mrn_sealed.eq(sealer
                        .seal_str(
                            &p(custodian::crypto::columns::patients::MRN),
                            &format!("MRN{i:08}"),
                        )
                        .unwrap()),
                    patients::mrn_index.eq(kr
                        .blind_index(BlindKind::Mrn, &format!("MRN{i:08}"))
                        .unwrap()),
                    patients::ssn_sealed.eq(Some(
                        sealer
                            .seal_str(
                                &p(custodian::crypto::columns::patients::SSN),
                                &format!("{i:09}"),
                            )
                            .unwrap(),
                    )),
                    patients::ssn_index.eq(Some(
                        kr.blind_index(BlindKind::Ssn, &format!("{i:09}")).unwrap(),
                    )),
                    patients::family_sealed.eq(sealer
                        .seal_str(
                            &p(custodian::crypto::columns::patients::FAMILY),
                            "Benchfamily",
                        )
                        .unwrap()),
                    patients::family_index
                        .eq(kr.blind_index(BlindKind::Family, "Benchfamily").unwrap()),
                    patients::given_sealed.eq(sealer
                        .seal_str(
                            &p(custodian::crypto::columns::patients::GIVEN),
                            "Benchgiven",
                        )
                        .unwrap()),
                    patients::given_index
                        .eq(kr.blind_index(BlindKind::Given, "Benchgiven").unwrap()),
                    patients::birth_date_sealed.eq(sealer
                        .seal_value(&p(custodian::crypto::columns::patients::BIRTH_DATE), &date)
                        .unwrap()),
                    patients::birth_date_index
                        .eq(kr.blind_index(BlindKind::BirthDate, "1980-01-01").unwrap()),
                    patients::gender.eq("unknown"),
                )
            })
            .collect();
        diesel::insert_into(patients::table)
            .values(values)
            .execute(&mut conn)
            .unwrap();
    }
    eprintln!(
        "loaded {rows} patients in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let started = Instant::now();
    let mut last = 0;
    let report = rotation::rotate_data_keys(
        &mut conn,
        &kr,
        RotateOptions {
            batch_size: 1000,
            max_batches: None,
        },
        &mut |p| {
            if p.done / 20_000 != last / 20_000 {
                eprintln!("  {}: {}/{}", p.table, p.done, p.total);
            }
            last = p.done;
        },
    )
    .unwrap();
    let secs = started.elapsed().as_secs_f64();
    assert!(report.complete && report.rows_reencrypted == rows as u64);
    println!(
        "keys rotate: {} rows ({} sealed values) re-encrypted in {:.2} s = {:.0} rows/s ({:.0} values/s), batch 1000",
        rows,
        rows * 5,
        secs,
        rows as f64 / secs,
        (rows * 5) as f64 / secs
    );

    drop(conn);
    let mut admin_conn = PgConnection::establish(&admin).unwrap();
    diesel::sql_query(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&mut admin_conn)
        .unwrap();
    if let Some(c) = cluster {
        c.stop().unwrap();
    }
}
