//! A local identity provider for tests: serves discovery and a JWKS, counts requests,
//! and mints tokens with ES256, EdDSA and RS256 keys.

use actix_web::{HttpResponse, web};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

// ---------------------------------------------------------------------------
// Keys.

#[derive(Clone)]
pub struct Signer {
    pub kid: String,
    pub alg: Algorithm,
    pub key: EncodingKey,
}

impl Signer {
    pub fn es256(kid: &str) -> Signer {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        Signer {
            kid: kid.into(),
            alg: Algorithm::ES256,
            key: EncodingKey::from_ec_der(&kp.serialize_der()),
        }
    }

    pub fn eddsa(kid: &str) -> Signer {
        // PKCS#8 v1 wrapping of a random Ed25519 seed (RFC 8410).
        let mut der = hex::decode("302e020100300506032b657004220420").unwrap();
        der.extend_from_slice(&rand::random::<[u8; 32]>());
        Signer {
            kid: kid.into(),
            alg: Algorithm::EdDSA,
            key: EncodingKey::from_ed_der(&der),
        }
    }

    /// RS256 with the test-only key under tests/fixtures.
    pub fn rs256(kid: &str) -> Signer {
        Signer {
            kid: kid.into(),
            alg: Algorithm::RS256,
            key: EncodingKey::from_rsa_pem(rsa_private_pem().as_bytes()).unwrap(),
        }
    }

    pub fn jwk(&self) -> Value {
        let mut jwk = Jwk::from_encoding_key(&self.key, self.alg).unwrap();
        jwk.common.key_id = Some(self.kid.clone());
        serde_json::to_value(jwk).unwrap()
    }

    /// An access token's header: `typ: at+jwt` (RFC 9068), as Custodian requires by
    /// default.
    pub fn header(&self) -> Header {
        let mut h = Header::new(self.alg);
        h.kid = Some(self.kid.clone());
        h.typ = Some("at+jwt".into());
        h
    }

    pub fn sign(&self, claims: &Value) -> String {
        self.sign_with(self.header(), claims)
    }

    pub fn sign_with(&self, header: Header, claims: &Value) -> String {
        jsonwebtoken::encode(&header, claims, &self.key).unwrap()
    }
}

pub fn fixture(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let text = std::fs::read_to_string(path).unwrap();
    // Skip the "test-only" comment line.
    text[text.find("-----BEGIN").unwrap()..].to_string()
}

pub fn rsa_private_pem() -> String {
    fixture("test-only-rsa-key.pem")
}

pub fn now() -> i64 {
    jsonwebtoken::get_current_timestamp() as i64
}

// ---------------------------------------------------------------------------
// A local identity provider.

#[derive(Clone)]
pub struct ProviderState {
    issuer: String,
    jwks: Arc<Mutex<Value>>,
    jwks_hits: Arc<AtomicUsize>,
    all_hits: Arc<AtomicUsize>,
    down: Arc<AtomicBool>,
}

pub struct Provider {
    state: ProviderState,
    handle: actix_web::dev::ServerHandle,
}

impl Provider {
    pub async fn start(keys: &[&Signer]) -> Provider {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let issuer = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let state = ProviderState {
            issuer,
            jwks: Arc::new(Mutex::new(json!({ "keys": [] }))),
            jwks_hits: Arc::default(),
            all_hits: Arc::default(),
            down: Arc::default(),
        };
        let data = state.clone();
        let server = actix_web::HttpServer::new(move || {
            actix_web::App::new()
                .app_data(web::Data::new(data.clone()))
                .route(
                    "/.well-known/openid-configuration",
                    web::get().to(discovery),
                )
                .route("/jwks", web::get().to(jwks))
                .default_service(web::to(other))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        let p = Provider { state, handle };
        p.set_keys(keys);
        p
    }

    pub fn issuer(&self) -> String {
        self.state.issuer.clone()
    }

    pub fn set_keys(&self, keys: &[&Signer]) {
        let keys: Vec<Value> = keys.iter().map(|k| k.jwk()).collect();
        *self.state.jwks.lock().unwrap() = json!({ "keys": keys });
    }

    pub fn jwks_hits(&self) -> usize {
        self.state.jwks_hits.load(Ordering::SeqCst)
    }

    pub fn all_hits(&self) -> usize {
        self.state.all_hits.load(Ordering::SeqCst)
    }

    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    pub async fn stop(&self) {
        self.handle.stop(false).await;
    }
}

async fn discovery(s: web::Data<ProviderState>) -> HttpResponse {
    s.all_hits.fetch_add(1, Ordering::SeqCst);
    if s.down.load(Ordering::SeqCst) {
        return HttpResponse::ServiceUnavailable().finish();
    }
    // What a provider that allows SMART launches publishes (RFC 8414 / OpenID Discovery).
    HttpResponse::Ok().json(json!({
        "issuer": s.issuer,
        "jwks_uri": format!("{}/jwks", s.issuer),
        "authorization_endpoint": format!("{}/authorize", s.issuer),
        "token_endpoint": format!("{}/token", s.issuer),
        "grant_types_supported": ["authorization_code", "client_credentials", "implicit"],
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["plain", "S256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "none"],
        "scopes_supported": ["openid", "profile"],
    }))
}

async fn jwks(s: web::Data<ProviderState>) -> HttpResponse {
    s.all_hits.fetch_add(1, Ordering::SeqCst);
    s.jwks_hits.fetch_add(1, Ordering::SeqCst);
    if s.down.load(Ordering::SeqCst) {
        return HttpResponse::ServiceUnavailable().finish();
    }
    let body = s.jwks.lock().unwrap().clone();
    HttpResponse::Ok().json(body)
}

async fn other(s: web::Data<ProviderState>) -> HttpResponse {
    s.all_hits.fetch_add(1, Ordering::SeqCst);
    HttpResponse::NotFound().finish()
}
