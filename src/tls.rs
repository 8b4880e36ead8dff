//! TLS termination with rustls (ring provider only): TLS 1.3 and TLS 1.2 with ECDHE +
//! AEAD suites, certificate checks with errors that name the setting, optional mTLS.

use crate::error::ConfigError;
use rustls::crypto::{CryptoProvider, ring};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use std::any::Any;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    #[default]
    Off,
    Optional,
    Required,
}

/// Certificate paths are checked when a listener is built (`serve`, `dev`), so that
/// commands such as `migrate` need no certificate.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub client_auth: ClientAuth,
    pub client_ca_file: Option<PathBuf>,
    pub client_identities: Vec<String>,
}

impl TlsConfig {
    /// `tls.client_identities`, parsed: certificate SHA-256 → client id.
    pub fn client_identities(
        &self,
    ) -> Result<std::collections::HashMap<[u8; 32], String>, ConfigError> {
        let bad = || {
            ConfigError::new(
                "tls.client_identities",
                "entries must be <64 hex digits of the certificate's SHA-256>=<client id>",
            )
        };
        let mut out = std::collections::HashMap::new();
        for entry in &self.client_identities {
            let (hash, client) = entry.split_once('=').ok_or_else(bad)?;
            let bytes: [u8; 32] = hex::decode(hash.trim().to_ascii_lowercase())
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(bad)?;
            let client = client.trim();
            let ok = !client.is_empty()
                && client.len() <= 128
                && client.bytes().all(|b| b.is_ascii_graphic());
            if !ok {
                return Err(bad());
            }
            out.insert(bytes, client.to_string());
        }
        Ok(out)
    }
}

/// Installs ring as the process-wide rustls provider. Safe to call more than once.
pub fn install_default_provider() {
    // An error only means a provider is already installed, which is what we want.
    let _ = ring::default_provider().install_default();
}

/// The ring provider restricted to the suites we allow. rustls has no CBC or static-RSA
/// suites at all; listing the allowed ones keeps that true if defaults ever change.
pub fn provider() -> Arc<CryptoProvider> {
    use ring::cipher_suite::*;
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            TLS13_AES_256_GCM_SHA384,
            TLS13_AES_128_GCM_SHA256,
            TLS13_CHACHA20_POLY1305_SHA256,
            TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ],
        ..ring::default_provider()
    })
}

/// The verified client certificate of a connection (leaf, DER), when mTLS supplied one.
#[derive(Clone, Debug)]
pub struct ClientCertificate(pub CertificateDer<'static>);

/// Builds the server configuration, checking files and certificate validity first.
pub fn server_config(cfg: &TlsConfig) -> Result<ServerConfig, ConfigError> {
    let provider = provider();
    let cert_file = cfg
        .cert_file
        .as_deref()
        .ok_or_else(|| ConfigError::new("tls.cert_file", "is required"))?;
    let key_file = cfg
        .key_file
        .as_deref()
        .ok_or_else(|| ConfigError::new("tls.key_file", "is required"))?;
    let chain = load_certs("tls.cert_file", cert_file)?;
    check_validity("tls.cert_file", &chain[0])?;
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| ConfigError::new("tls.key_file", pem_problem(key_file, "private key", e)))?;
    let signing_key = provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|_| ConfigError::new("tls.key_file", "is not a supported private key"))?;
    CertifiedKey::new(chain.clone(), signing_key)
        .keys_match()
        .map_err(|_| {
            ConfigError::new(
                "tls.key_file",
                "does not match the certificate in tls.cert_file",
            )
        })?;

    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|_| ConfigError::new("tls", "cannot enable TLS 1.2/1.3 with this provider"))?;
    let builder = match cfg.client_auth {
        ClientAuth::Off => builder.with_no_client_auth(),
        mode => {
            let path = cfg.client_ca_file.as_deref().ok_or_else(|| {
                ConfigError::new(
                    "tls.client_ca_file",
                    "is required when tls.client_auth is not off",
                )
            })?;
            let mut roots = RootCertStore::empty();
            for ca in load_certs("tls.client_ca_file", path)? {
                roots.add(ca).map_err(|_| {
                    ConfigError::new(
                        "tls.client_ca_file",
                        "contains a certificate that is not a valid CA",
                    )
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if mode == ClientAuth::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier.build().map_err(|_| {
                ConfigError::new("tls.client_ca_file", "cannot be used to verify clients")
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    builder
        .with_single_cert(chain, key)
        .map_err(|_| ConfigError::new("tls.cert_file", "cannot be used with tls.key_file"))
}

fn load_certs(setting: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| ConfigError::new(setting, pem_problem(path, "certificate", e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError::new(setting, pem_problem(path, "certificate", e)))?;
    if certs.is_empty() {
        return Err(ConfigError::new(
            setting,
            format!("{} contains no PEM certificate", path.display()),
        ));
    }
    Ok(certs)
}

fn pem_problem(path: &Path, what: &str, e: rustls_pki_types::pem::Error) -> String {
    match e {
        rustls_pki_types::pem::Error::Io(io) => format!("cannot read {}: {io}", path.display()),
        rustls_pki_types::pem::Error::NoItemsFound => {
            format!("{} contains no PEM {what}", path.display())
        }
        _ => format!("{} is not a valid PEM {what}", path.display()),
    }
}

fn check_validity(setting: &str, leaf: &CertificateDer<'_>) -> Result<(), ConfigError> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|_| ConfigError::new(setting, "the first certificate cannot be parsed"))?;
    let now = chrono::Utc::now().timestamp();
    let validity = cert.validity();
    if validity.not_after.timestamp() < now {
        return Err(ConfigError::new(
            setting,
            format!("certificate expired on {}", validity.not_after),
        ));
    }
    if validity.not_before.timestamp() > now {
        return Err(ConfigError::new(
            setting,
            format!("certificate is not valid before {}", validity.not_before),
        ));
    }
    Ok(())
}

/// Whether Nagle's algorithm is off on a connection (`TCP_NODELAY`), as the socket reports
/// it once accepted; kept with the connection so that tests and diagnostics see what the
/// server really runs with.
#[derive(Clone, Copy, Debug)]
pub struct NoDelay(pub bool);

/// `HttpServer::on_connect` hook: keeps the verified client certificate (if any) and the
/// socket's [`NoDelay`] with the connection, for reading through `conn_data`.
pub fn on_connect(conn: &dyn Any, ext: &mut actix_web::dev::Extensions) {
    use actix_tls::accept::rustls_0_23::TlsStream;
    if let Some(tls) = conn.downcast_ref::<TlsStream<actix_web::rt::net::TcpStream>>() {
        let (tcp, session) = tls.get_ref();
        ext.insert(NoDelay(tcp.nodelay().unwrap_or(false)));
        if let Some(leaf) = session.peer_certificates().and_then(|c| c.first()) {
            ext.insert(ClientCertificate(leaf.clone().into_owned()));
        }
    }
}

/// A self-signed certificate for local development and tests.
pub fn self_signed(names: &[&str]) -> anyhow::Result<(String, String)> {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let cert = rcgen::generate_simple_self_signed(names)?;
    Ok((cert.cert.pem(), cert.signing_key.serialize_pem()))
}
