//! The TLS scan: `sslyze` (PyPI) against the running server, which must pass the Mozilla
//! *intermediate* profile (versions, suites, key exchange groups, certificate type,
//! signature and life span, chain validation, extended master secret, renegotiation,
//! downgrade protection, compression, Heartbleed, ROBOT, CCS injection).
//!
//! The server presents a leaf issued by a test CA, as in production (a self-signed
//! certificate with a life span of centuries would fail the profile's certificate
//! rules); sslyze validates the chain against that CA only.
//!
//! sslyze is not a Rust crate: `.ci/run` installs it into `target/tools/sslyze` (a
//! Python venv). The test never skips: without sslyze it fails with the install command.

use crate::support::TestApp;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use std::path::PathBuf;
use std::process::Command;

/// The sslyze version `.ci/run` installs (the profile it checks is its bundled 5.7).
pub const SSLYZE_VERSION: &str = "6.3.1";

fn sslyze() -> PathBuf {
    if let Some(given) = std::env::var_os("CUSTODIAN_SSLYZE") {
        return PathBuf::from(given);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/tools/sslyze");
    let sslyze = venv.join("bin/sslyze");
    if !sslyze.is_file() {
        // Installed on first use, like the test OpenID provider, so that `cargo test` alone
        // runs the whole suite; `.ci/run` installs the same version beforehand.
        install_sslyze(&venv);
    }
    sslyze
}

fn install_sslyze(venv: &std::path::Path) {
    let hint = format!(
        "sslyze is not installed and could not be installed. Install it as .ci/run does:\n  \
         python3 -m venv target/tools/sslyze && \
         target/tools/sslyze/bin/pip install sslyze=={SSLYZE_VERSION}\n\
         (or set CUSTODIAN_SSLYZE to an sslyze executable)"
    );
    let ok = |mut c: std::process::Command| c.status().is_ok_and(|s| s.success());
    let mut venv_cmd = std::process::Command::new("python3");
    venv_cmd.args(["-m", "venv"]).arg(venv);
    let mut pip = std::process::Command::new(venv.join("bin/pip"));
    pip.args(["install", "-q", "--disable-pip-version-check"])
        .arg(format!("sslyze=={SSLYZE_VERSION}"));
    assert!(ok(venv_cmd) && ok(pip), "{hint}");
}

/// A test CA and a server certificate it issued: ECDSA P-256, SHA-256, valid from
/// yesterday for 90 days (the profile's recommended life span), for localhost.
struct ServerPki {
    dir: tempfile::TempDir,
}

impl ServerPki {
    fn new() -> ServerPki {
        let day = |offset: i64| {
            use chrono::Datelike;
            let d = chrono::Utc::now().date_naive() + chrono::Duration::days(offset);
            rcgen::date_time_ymd(d.year(), d.month() as u8, d.day() as u8)
        };
        let mut ca_params = CertificateParams::new(vec![]).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Custodian test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca_params.serial_number = Some(SerialNumber::from(vec![0x01, 0x23, 0x45]));
        ca_params.not_before = day(-1);
        ca_params.not_after = day(365);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();

        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        // What strict path validation (sslyze uses pyca/cryptography's) requires of a
        // leaf: authority key id, key usage, server-auth purpose, a positive serial.
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.serial_number = Some(SerialNumber::from(vec![0x02, 0x46, 0x8a]));
        params.not_before = day(-1);
        params.not_after = day(89);
        let leaf = params.signed_by(&key, &ca).unwrap();

        let dir = tempfile::tempdir().unwrap();
        // The chain the server sends: leaf, then the issuing CA.
        std::fs::write(
            dir.path().join("chain.pem"),
            format!("{}{}", leaf.pem(), ca.pem()),
        )
        .unwrap();
        std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        ServerPki { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

#[tokio::test]
async fn sslyze_finds_the_server_compliant_with_the_mozilla_intermediate_profile() {
    let sslyze = sslyze();
    let pki = ServerPki::new();
    let app = TestApp::builder()
        .set("tls.cert_file", pki.path("chain.pem"))
        .set("tls.key_file", pki.path("key.pem"))
        .spawn()
        .await;
    let json = pki.dir.path().join("sslyze.json");
    let port = app.https.port();
    let target = format!("localhost:{port}{{127.0.0.1}}");
    let ca = pki.path("ca.pem");
    let json_arg = json.display().to_string();
    let started = std::time::Instant::now();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(&sslyze)
            .args([
                "--mozilla_config=intermediate",
                "--certinfo_ca_file",
                &ca,
                "--json_out",
                &json_arg,
                &target,
            ])
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", sslyze.display()))
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report = || {
        // The trust verdicts and the compliance section say what failed.
        let lines: Vec<&str> = stdout
            .lines()
            .filter(|l| {
                let l = l.trim();
                l.contains("FAILED") || l.contains("ERROR") || l.contains("ompliant")
            })
            .collect();
        format!(
            "sslyze exited with {} after {:.0} s\n--- stdout (failures and verdict) ---\n{}\n--- stderr ---\n{stderr}",
            out.status,
            started.elapsed().as_secs_f64(),
            lines.join("\n")
        )
    };
    assert!(out.status.success(), "{}", report());
    // The exit status alone is not enough: the scan must have reached the server and run
    // the profile check (sslyze exits 0 when it could not connect at all).
    assert!(
        stdout.contains("Checking results against Mozilla's \"intermediate\" configuration"),
        "{}",
        report()
    );
    assert!(
        stdout.contains(&format!("localhost:{port}: OK - Compliant.")),
        "{}",
        report()
    );
    let parsed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let results = parsed["server_scan_results"].as_array().unwrap();
    assert_eq!(results.len(), 1, "{}", report());
    assert_eq!(results[0]["scan_status"], "COMPLETED", "{}", report());
    let scan = &results[0]["scan_result"];
    // What the profile allows, seen from the scan itself: nothing below TLS 1.2.
    for old in [
        "ssl_2_0_cipher_suites",
        "ssl_3_0_cipher_suites",
        "tls_1_0_cipher_suites",
        "tls_1_1_cipher_suites",
    ] {
        assert_eq!(
            scan[old]["result"]["is_tls_version_supported"], false,
            "{old}"
        );
    }
    for current in ["tls_1_2_cipher_suites", "tls_1_3_cipher_suites"] {
        assert_eq!(
            scan[current]["result"]["is_tls_version_supported"], true,
            "{current}"
        );
    }
}
