//! Raw TLS clients for handshake tests: rustls (what a modern client does) and the
//! `openssl` command line (to offer what rustls cannot: TLS 1.0/1.1, CBC, static RSA).

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, SupportedCipherSuite, SupportedProtocolVersion};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub struct Outcome {
    pub version: rustls::ProtocolVersion,
    pub alpn: Option<Vec<u8>>,
    pub status_line: String,
}

pub struct Offer<'a> {
    pub versions: &'a [&'static SupportedProtocolVersion],
    pub suites: Option<Vec<SupportedCipherSuite>>,
    pub alpn: Vec<Vec<u8>>,
    pub client_cert: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
}

static TLS13_AND_TLS12: [&SupportedProtocolVersion; 2] =
    [&rustls::version::TLS13, &rustls::version::TLS12];

impl Default for Offer<'_> {
    fn default() -> Self {
        Offer {
            versions: &TLS13_AND_TLS12,
            suites: None,
            alpn: vec![b"http/1.1".to_vec()],
            client_cert: None,
        }
    }
}

/// Handshakes, sends `GET /healthz` over HTTP/1.1 and reads the status line. Any TLS
/// failure (including a client certificate refused after the handshake) is an `Err`.
pub async fn connect(addr: SocketAddr, offer: Offer<'_>) -> Result<Outcome, String> {
    let mut provider = rustls::crypto::ring::default_provider();
    if let Some(suites) = offer.suites {
        provider.cipher_suites = suites;
    }
    let mut roots = RootCertStore::empty();
    let pem = super::test_cert().cert_pem.clone();
    for cert in rustls_pemfile_certs(&pem) {
        roots.add(cert).unwrap();
    }
    let builder = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(offer.versions)
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut config = match offer.client_cert {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| e.to_string())?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = offer.alpn;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (_, session) = tls.get_ref();
    let version = session.protocol_version().ok_or("no version")?;
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    if alpn.as_deref() == Some(b"h2") {
        return Ok(Outcome {
            version,
            alpn,
            status_line: String::new(),
        });
    }
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    tls.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf);
    let status_line = text.lines().next().unwrap_or("").to_string();
    if status_line.is_empty() {
        return Err("no HTTP response".into());
    }
    Ok(Outcome {
        version,
        alpn,
        status_line,
    })
}

fn rustls_pemfile_certs(pem: &str) -> Vec<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| c.unwrap())
        .collect()
}

/// Runs `openssl s_client` with extra arguments; true when a session was established.
/// (Async: a blocking wait would stall the test runtime that serves the app.)
pub async fn openssl_handshake(addr: SocketAddr, args: &[&str]) -> bool {
    let out = tokio::process::Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(addr.to_string())
        .args(["-servername", "localhost"])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("the openssl command line tool is installed (.ci/run installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    let established = text
        .lines()
        .any(|l| l.starts_with("New, ") && !l.contains("(NONE)"));
    established && out.status.success()
}

/// A TLS connection to the test server (HTTP/1.1 by ALPN, trusting the test
/// certificate), for tests that write requests byte by byte.
pub async fn tls_stream(
    addr: SocketAddr,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = RootCertStore::empty();
    for cert in rustls_pemfile_certs(&super::test_cert().cert_pem) {
        roots.add(cert).unwrap();
    }
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

/// Sends `request` byte for byte over TLS and returns the whole response. For request
/// targets that HTTP clients would normalise (`/./fhir`, `/x/../fhir`) or refuse.
pub async fn raw_https(addr: SocketAddr, request: &str) -> String {
    let mut tls = tls_stream(addr).await;
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    // A server may close without close_notify after `Connection: close`.
    let _ = tls.read_to_end(&mut buf).await;
    String::from_utf8_lossy(&buf).into_owned()
}

/// [`raw_https`] over plain TCP (the redirect listener).
pub async fn raw_http(addr: SocketAddr, request: &str) -> String {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = tcp.read_to_end(&mut buf).await;
    String::from_utf8_lossy(&buf).into_owned()
}
