//! TLS termination: protocol versions, cipher suites, ALPN, client certificates and
//! certificate problems at start-up.

use crate::support::tlsclient::{self, Offer, openssl_handshake};
use crate::support::{TestApp, test_cert};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::crypto::ring::cipher_suite as suite;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

#[tokio::test]
async fn tls13_is_accepted() {
    let app = TestApp::spawn().await;
    let out = tlsclient::connect(
        app.https,
        Offer {
            versions: &[&rustls::version::TLS13],
            ..Offer::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(out.version, rustls::ProtocolVersion::TLSv1_3);
    assert!(out.status_line.contains("200"), "{}", out.status_line);
}

#[tokio::test]
async fn tls12_with_ecdhe_aead_is_accepted() {
    let app = TestApp::spawn().await;
    let out = tlsclient::connect(
        app.https,
        Offer {
            versions: &[&rustls::version::TLS12],
            suites: Some(vec![suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256]),
            ..Offer::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(out.version, rustls::ProtocolVersion::TLSv1_2);
    // The same suite through OpenSSL: the control for the refusals below.
    assert!(
        openssl_handshake(
            app.https,
            &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"]
        )
        .await
    );
}

#[tokio::test]
async fn tls10_and_tls11_are_refused() {
    let app = TestApp::spawn().await;
    for version in ["-tls1", "-tls1_1"] {
        assert!(
            !openssl_handshake(app.https, &[version, "-cipher", "DEFAULT@SECLEVEL=0"]).await,
            "{version} was accepted"
        );
    }
}

#[tokio::test]
async fn tls12_cbc_and_non_ecdhe_suites_are_refused() {
    let app = TestApp::spawn().await;
    for cipher in [
        "ECDHE-ECDSA-AES128-SHA",    // CBC
        "ECDHE-ECDSA-AES256-SHA384", // CBC
        "AES128-GCM-SHA256",         // static RSA key exchange
        "DHE-RSA-AES128-GCM-SHA256", // finite-field DH
    ] {
        assert!(
            !openssl_handshake(
                app.https,
                &["-tls1_2", "-cipher", &format!("{cipher}@SECLEVEL=0")]
            )
            .await,
            "{cipher} was accepted"
        );
    }
}

#[tokio::test]
async fn http2_is_negotiated_by_alpn() {
    let app = TestApp::spawn().await;
    let out = tlsclient::connect(
        app.https,
        Offer {
            alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            ..Offer::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(out.alpn.as_deref(), Some(&b"h2"[..]));
    let res = app.get("/healthz").await;
    assert_eq!(res.version(), reqwest::Version::HTTP_2);
}

/// Issue 19: with Nagle's algorithm on, the last small TLS record of a response waited for
/// the client's delayed ACK (~40 ms per request on a kept-alive HTTP/2 connection).
#[tokio::test]
async fn accepted_connections_run_without_nagle_over_http1_and_http2() {
    let app = TestApp::builder()
        .extra_routes(crate::support::test_routes::add)
        .spawn()
        .await;
    let res = app.get("/api/test/nodelay").await;
    assert_eq!(res.version(), reqwest::Version::HTTP_2);
    assert_eq!(res.text().await.unwrap(), "true");

    let http1 = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(crate::support::test_cert().cert_pem.as_bytes())
                .unwrap(),
        )
        .http1_only()
        .build()
        .unwrap();
    let res = http1
        .get(app.url("/api/test/nodelay"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.version(), reqwest::Version::HTTP_11);
    assert_eq!(res.text().await.unwrap(), "true");
}

struct Pki {
    dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let mut params = CertificateParams::new(vec![]).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        Pki { dir, ca }
    }

    fn ca_file(&self) -> String {
        self.dir.path().join("ca.pem").display().to_string()
    }

    fn client(
        &self,
        issuer: Option<&CertifiedIssuer<'static, KeyPair>>,
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec!["client.example".to_string()]).unwrap();
        let cert = params.signed_by(&key, issuer.unwrap_or(&self.ca)).unwrap();
        (
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
    }
}

#[tokio::test]
async fn mtls_required_refuses_missing_and_untrusted_certificates() {
    let pki = Pki::new();
    let app = TestApp::builder()
        .set("tls.client_auth", "required")
        .set("tls.client_ca_file", pki.ca_file())
        .extra_routes(crate::support::test_routes::add)
        .spawn()
        .await;

    let none = tlsclient::connect(app.https, Offer::default()).await;
    assert!(none.is_err(), "no client certificate was accepted");

    let stranger = Pki::new();
    let untrusted = tlsclient::connect(
        app.https,
        Offer {
            client_cert: Some(stranger.client(None)),
            ..Offer::default()
        },
    )
    .await;
    assert!(
        untrusted.is_err(),
        "a certificate from another CA was accepted"
    );

    let trusted = tlsclient::connect(
        app.https,
        Offer {
            client_cert: Some(pki.client(None)),
            ..Offer::default()
        },
    )
    .await
    .unwrap();
    assert!(trusted.status_line.contains("200"));
}

#[tokio::test]
async fn mtls_optional_accepts_anonymous_clients_and_exposes_verified_certificates() {
    let pki = Pki::new();
    let app = TestApp::builder()
        .set("tls.client_auth", "optional")
        .set("tls.client_ca_file", pki.ca_file())
        .extra_routes(crate::support::test_routes::add)
        .spawn()
        .await;
    let anonymous = tlsclient::connect(app.https, Offer::default())
        .await
        .unwrap();
    assert!(anonymous.status_line.contains("200"));

    // The certificate reaches request handlers through the connection data.
    let (chain, key) = pki.client(None);
    let client = identity_client(&chain, &key);
    let body = client
        .get(app.url("/api/test/client-cert"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    use sha2::Digest;
    assert_eq!(body, hex::encode(sha2::Sha256::digest(chain[0].as_ref())));
    assert_eq!(
        app.client
            .get(app.url("/api/test/client-cert"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "none"
    );
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

fn tls_config(cert: &std::path::Path, key: &std::path::Path) -> custodian::tls::TlsConfig {
    custodian::tls::TlsConfig {
        cert_file: Some(cert.to_path_buf()),
        key_file: Some(key.to_path_buf()),
        client_auth: custodian::tls::ClientAuth::Off,
        client_ca_file: None,
        client_identities: Vec::new(),
    }
}

#[test]
fn certificate_problems_name_the_setting() {
    custodian::tls::install_default_provider();
    let dir = tempfile::tempdir().unwrap();
    let good = test_cert();

    let missing =
        custodian::tls::server_config(&tls_config(&dir.path().join("nope.pem"), &good.key))
            .unwrap_err();
    assert_eq!(missing.setting, "tls.cert_file");
    assert!(
        missing.problem.contains("cannot read"),
        "{}",
        missing.problem
    );

    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let err = custodian::tls::server_config(&tls_config(&garbage, &good.key)).unwrap_err();
    assert_eq!(err.setting, "tls.cert_file");

    let other_key = dir.path().join("other.key");
    std::fs::write(&other_key, KeyPair::generate().unwrap().serialize_pem()).unwrap();
    let mismatch = custodian::tls::server_config(&tls_config(&good.cert, &other_key)).unwrap_err();
    assert_eq!(mismatch.setting, "tls.key_file");
    assert!(
        mismatch.problem.contains("does not match"),
        "{}",
        mismatch.problem
    );

    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let expired = params.self_signed(&key).unwrap();
    let (ec, ek) = (
        dir.path().join("expired.pem"),
        dir.path().join("expired.key"),
    );
    std::fs::write(&ec, expired.pem()).unwrap();
    std::fs::write(&ek, key.serialize_pem()).unwrap();
    let err = custodian::tls::server_config(&tls_config(&ec, &ek)).unwrap_err();
    assert_eq!(err.setting, "tls.cert_file");
    assert!(err.problem.contains("expired"), "{}", err.problem);

    assert!(custodian::tls::server_config(&tls_config(&good.cert, &good.key)).is_ok());
}

fn identity_client(
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
) -> reqwest::Client {
    let mut pem = String::new();
    for c in chain {
        pem.push_str(&pem_encode("CERTIFICATE", c.as_ref()));
    }
    pem.push_str(&pem_encode("PRIVATE KEY", key.secret_der()));
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(test_cert().cert_pem.as_bytes()).unwrap(),
        )
        .identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap())
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_mapped_client_certificate_is_a_service_principal_with_roles_from_the_database() {
    use custodian::db::{phi, users};
    use sha2::Digest;
    let pki = Pki::new();
    let (chain, key) = pki.client(None);
    let fingerprint = hex::encode(sha2::Sha256::digest(chain[0].as_ref()));
    let app = TestApp::builder()
        .set("tls.client_auth", "optional")
        .set("tls.client_ca_file", pki.ca_file())
        .set(
            "tls.client_identities",
            vec![format!("{fingerprint}=lab-interface")],
        )
        .spawn()
        .await;
    let lab = identity_client(&chain, &key);
    let search = app.url("/fhir/Patient?family=Nobody");

    // Authenticated by the certificate, but no role yet: default deny (403, not 401).
    assert_eq!(lab.get(&search).send().await.unwrap().status(), 403);

    let mut c = app.db.conn();
    let facility = phi::insert_facility(&mut c, "Lab Facility").unwrap();
    let user = users::user_for(&mut c, "mtls", "lab-interface", users::UserKind::Service).unwrap();
    users::grant_role(
        &mut c,
        user.id,
        custodian::policy::Role::Service,
        "lab feed",
        None,
    )
    .unwrap();
    users::set_facility(&mut c, user.id, Some(facility)).unwrap();
    let res = lab.get(&search).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let bundle: serde_json::Value = res.json().await.unwrap();
    assert_eq!(bundle["resourceType"], "Bundle");

    // A certificate from the same CA that is not mapped authenticates nobody.
    let (other_chain, other_key) = pki.client(None);
    let stranger = identity_client(&other_chain, &other_key);
    assert_eq!(stranger.get(&search).send().await.unwrap().status(), 401);
    // Without a certificate and without a token: 401.
    assert_eq!(app.client.get(&search).send().await.unwrap().status(), 401);
}
