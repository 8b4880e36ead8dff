//! Property tests (proptest) over the parsers that take outside input: the access-token
//! verifier, the FHIR JSON bodies and search parameters (directly and through the real
//! server), and the audit export reader of `custodian audit verify --file`. Each property
//! says what must hold for *every* input: never a panic, never a 5xx, a refusal that is a
//! fixed 4xx, and a verdict that matches an independent oracle where there is one.
//!
//! Failing cases are shrunk by proptest and printed; `PROPTEST_CASES` raises the number
//! of cases for a longer local run.

use crate::support::TestApp;
use crate::support::idp::{Provider, Signer, now};
use crate::support::world::{AUDIENCE, World, patient_json};
use custodian::error::AppError;
use custodian::policy::Role;
use proptest::prelude::*;
use proptest::test_runner::{Config as PropConfig, TestRunner};
use serde_json::{Value, json};
use std::sync::OnceLock;

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn runner(default_cases: u32) -> TestRunner {
    TestRunner::new(PropConfig {
        cases: cases(default_cases),
        failure_persistence: None,
        ..PropConfig::default()
    })
}

/// A refusal must be a client error with our fixed message, never an internal error.
fn assert_client_error(what: &str, input: &str, e: AppError) {
    match e {
        AppError::Client { status, .. } => {
            assert!(status.is_client_error(), "{what}({input:?}) gave {status}")
        }
        other => panic!("{what}({input:?}) gave a non-client error: {other:?}"),
    }
}

/// Text that parsers meet in practice and in attacks: any Unicode, plus the characters
/// that matter to them (separators, digits, dates, control characters, `|`, `%`).
fn hostile_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[0-9T:+\\-Z.|,%=a-z ]{0,40}",
        "(ge|le|gt|lt|eq|ne|sa|eb|ap)?[0-9]{1,6}(-[0-9]{1,2}(-[0-9]{1,2}(T[0-9]{1,2}:[0-9]{1,2}(:[0-9]{1,2}(\\.[0-9]{1,9})?)?(Z|[+-][0-9]{2}:[0-9]{2})?)?)?)?",
        "[\\x00-\\x1f\\u{2028}\\u{2029}\\u{feff}\\u{202e}a-z0-9-]{0,20}",
    ]
}

// ---------------------------------------------------------------------------------------
// Pure parsers: search parameters, FHIR primitive types, page size, _elements, JSON.

#[test]
fn search_and_type_parsers_answer_ok_or_a_fixed_4xx_for_any_text() {
    use custodian::fhir::elements::Elements;
    use custodian::fhir::{bundle, params, types};
    use custodian::policy::ResourceType;
    runner(1024)
        .run(&hostile_text(), |s| {
            let check = |what: &str, r: Result<(), AppError>| {
                if let Err(e) = r {
                    assert_client_error(what, &s, e);
                }
            };
            check(
                "date_conditions",
                params::date_conditions("date", &s).map(drop),
            );
            check("or_values", params::or_values("code", &s).map(drop));
            check("date_time", params::date_time("date", &s).map(drop));
            check("token", params::token("identifier", &s, 64).map(drop));
            check("parse_id", params::parse_id(&s).map(drop));
            check("patient_param", params::patient_param(&s).map(drop));
            check(
                "patient_reference",
                params::patient_reference("subject.reference", &s).map(drop),
            );
            check("page_size", bundle::page_size(Some(&s)).map(drop));
            check("birth_date", types::birth_date(&s).map(drop));
            check("Ssn::parse", types::Ssn::parse(&s).map(drop));
            check("Mrn::parse", types::Mrn::parse(&s).map(drop));
            check("Gender::parse", types::Gender::parse(&s).map(drop));
            check(
                "bounded_text",
                types::bounded_text("name.family", &s, 100).map(drop),
            );
            check(
                "loinc_code",
                custodian::fhir::types::loinc_code("code", &s).map(drop),
            );
            check(
                "sanitise_note",
                custodian::fhir::document_reference::sanitise_note(&s).map(drop),
            );
            for kind in ResourceType::ALL {
                check("Elements::parse", Elements::parse(kind, Some(&s)).map(drop));
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn json_parser_never_panics_and_refuses_with_a_fixed_4xx() {
    use custodian::web::json::{JsonLimits, nesting_depth, parse};
    let limits = JsonLimits { max_depth: 32 };
    let bytes = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..256),
        // JSON-shaped text, often almost valid.
        "[\\[\\]{}\",:0-9a-z\\\\ ]{0,120}".prop_map(String::into_bytes),
        // Deep nesting around a value.
        (0usize..80).prop_map(|d| format!("{}1{}", "[".repeat(d), "]".repeat(d)).into_bytes()),
    ];
    runner(1024)
        .run(&bytes, |b| {
            let text = String::from_utf8_lossy(&b).to_string();
            match parse::<Value>(&b, limits) {
                Ok(_) => prop_assert!(nesting_depth(&b) <= 32, "too deep, yet accepted"),
                Err(e) => assert_client_error("json::parse", &text, e),
            }
            Ok(())
        })
        .unwrap();
}

// ---------------------------------------------------------------------------------------
// The access-token verifier, against a real JWKS.

struct TokenRig {
    rt: tokio::runtime::Runtime,
    _idp: Provider,
    issuer: String,
    signer: Signer,
    verifier: custodian::auth::token::TokenVerifier,
}

fn token_rig() -> &'static TokenRig {
    static RIG: OnceLock<TokenRig> = OnceLock::new();
    RIG.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let signer = Signer::es256("prop");
        let idp = rt.block_on(Provider::start(&[&signer]));
        let issuer = idp.issuer();
        let config = TestApp::builder()
            .set("auth.issuer", issuer.clone())
            .set("auth.audience", AUDIENCE)
            .config("postgres://nobody@127.0.0.1:1/none");
        let verifier = custodian::auth::token::TokenVerifier::new(
            config.auth.as_ref().unwrap(),
            custodian::domain::clock::system(),
        )
        .unwrap();
        TokenRig {
            rt,
            _idp: idp,
            issuer,
            signer,
            verifier,
        }
    })
}

#[test]
fn token_verifier_refuses_any_garbage_and_any_one_character_change() {
    let rig = token_rig();
    let valid = rig.signer.sign(&json!({
        "iss": rig.issuer, "aud": AUDIENCE, "sub": "dr-prop", "exp": now() + 600,
        "iat": now(), "scope": "user/Patient.rs",
    }));
    assert!(rig.rt.block_on(rig.verifier.verify(&valid)).is_ok());
    let b64 = "[A-Za-z0-9_-]{0,60}";
    let garbage = prop_oneof![
        any::<String>(),
        (b64, b64, b64).prop_map(|(a, b, c)| format!("{a}.{b}.{c}")),
        (b64, b64).prop_map(|(a, b)| format!("{a}.{b}.")),
        (b64, b64, b64, b64, b64).prop_map(|(a, b, c, d, e)| format!("{a}.{b}.{c}.{d}.{e}")),
    ];
    runner(512)
        .run(&garbage, |raw| {
            prop_assert!(rig.rt.block_on(rig.verifier.verify(&raw)).is_err());
            Ok(())
        })
        .unwrap();
    let alphabet: Vec<char> = ('A'..='Z')
        .chain('a'..='z')
        .chain('0'..='9')
        .chain(['-', '_', '.', '='])
        .collect();
    let change = (0..valid.len(), proptest::sample::select(alphabet));
    runner(512)
        .run(&change, |(at, c)| {
            let mut mutated: Vec<char> = valid.chars().collect();
            prop_assume!(mutated[at] != c);
            mutated[at] = c;
            let mutated: String = mutated.into_iter().collect();
            let verdict = rig.rt.block_on(rig.verifier.verify(&mutated));
            prop_assert!(verdict.is_err(), "changed at {at} to {c:?}, still accepted");
            Ok(())
        })
        .unwrap();
}

#[test]
fn token_verifier_accepts_exactly_the_tokens_whose_claims_are_right() {
    let rig = token_rig();
    #[derive(Debug, Clone)]
    struct Shape {
        iss: u8,
        aud: u8,
        exp: u8,
        sub: u8,
        nbf: u8,
        id_token_claim: bool,
    }
    let shape = (0u8..4, 0u8..5, 0u8..5, 0u8..4, 0u8..4, any::<bool>()).prop_map(
        |(iss, aud, exp, sub, nbf, id_token_claim)| Shape {
            iss,
            aud,
            exp,
            sub,
            nbf,
            id_token_claim,
        },
    );
    runner(384)
        .run(&shape, |s| {
            let t = now();
            let mut claims = serde_json::Map::new();
            let mut put = |k: &str, v: Option<Value>| {
                if let Some(v) = v {
                    claims.insert(k.to_string(), v);
                }
            };
            put(
                "iss",
                match s.iss {
                    0 => Some(json!(rig.issuer)),
                    1 => Some(json!(format!("{}/", rig.issuer))),
                    2 => Some(json!(7)),
                    _ => None,
                },
            );
            put(
                "aud",
                match s.aud {
                    0 => Some(json!(AUDIENCE)),
                    1 => Some(json!(["https://other.example", AUDIENCE])),
                    2 => Some(json!("https://other.example")),
                    3 => Some(json!(["https://other.example"])),
                    _ => None,
                },
            );
            put(
                "exp",
                match s.exp {
                    0 => Some(json!(t + 600)),
                    1 => Some(json!(t - 3600)),
                    2 => Some(json!("tomorrow")),
                    3 => Some(json!(i64::MAX)),
                    _ => None,
                },
            );
            put(
                "sub",
                match s.sub {
                    0 => Some(json!("dr-prop")),
                    1 => Some(json!(42)),
                    2 => Some(json!(null)),
                    _ => None,
                },
            );
            put(
                "nbf",
                match s.nbf {
                    0 => Some(json!(t - 10)),
                    1 => Some(json!(t + 3600)),
                    2 => Some(json!("soon")),
                    _ => None,
                },
            );
            put("iat", Some(json!(t)));
            if s.id_token_claim {
                put("nonce", Some(json!("n-0S6_WzA2Mj")));
            }
            let token = rig.signer.sign(&Value::Object(claims));
            let expected = s.iss == 0
                && s.aud <= 1
                && (s.exp == 0 || s.exp == 3)
                && s.sub == 0
                && (s.nbf == 0 || s.nbf == 3)
                && !s.id_token_claim;
            let verdict = rig.rt.block_on(rig.verifier.verify(&token));
            prop_assert_eq!(verdict.is_ok(), expected, "{:?}: {:?}", s, verdict.err());
            Ok(())
        })
        .unwrap();
}

// ---------------------------------------------------------------------------------------
// FHIR JSON bodies and search parameters through the real server.

struct ApiRig {
    rt: tokio::runtime::Runtime,
    world: World,
    token: String,
    existing: uuid::Uuid,
}

fn api_rig() -> &'static ApiRig {
    static RIG: OnceLock<ApiRig> = OnceLock::new();
    RIG.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (world, token, existing) = rt.block_on(async {
            let w = World::new().await;
            let (_, token) = w.user("dr-prop", &[Role::Clinician]);
            let existing = w
                .create(&token, &patient_json("MRN-PROP", "Proptest"))
                .await;
            (w, token, existing)
        });
        ApiRig {
            rt,
            world,
            token,
            existing,
        }
    })
}

/// A JSON value of any type, small.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        hostile_text().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::btree_map("[a-zA-Z]{1,12}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A Patient body with one part replaced, removed or added.
fn mutated_patient() -> impl Strategy<Value = Value> {
    let paths: Vec<&'static str> = vec![
        "/resourceType",
        "/identifier",
        "/identifier/0",
        "/identifier/0/system",
        "/identifier/0/value",
        "/identifier/1/value",
        "/name",
        "/name/0",
        "/name/0/family",
        "/name/0/given",
        "/name/0/given/0",
        "/gender",
        "/birthDate",
        "/telecom/0/value",
        "/telecom/0/system",
        "/address/0/line/0",
        "/address/0/postalCode",
        "/id",
        "/meta",
        "/managingOrganization",
        "/extension",
    ];
    (
        proptest::sample::select(paths),
        0u8..3,
        any_json(),
        0u32..1_000_000,
    )
        .prop_map(|(path, op, value, n)| {
            let mut p = patient_json(&format!("MRN-P{n}"), "Proptest");
            let (parent, key) = path.rsplit_once('/').unwrap();
            let parent = if parent.is_empty() {
                Some(&mut p)
            } else {
                p.pointer_mut(parent)
            };
            match (parent, op) {
                (Some(Value::Object(o)), 0) => {
                    o.remove(key);
                }
                (Some(Value::Object(o)), _) => {
                    o.insert(key.to_string(), value);
                }
                (Some(Value::Array(a)), _) => {
                    let i: usize = key.parse().unwrap();
                    if i < a.len() {
                        if op == 0 {
                            a.remove(i);
                        } else {
                            a[i] = value;
                        }
                    } else {
                        a.push(value);
                    }
                }
                _ => {}
            }
            p
        })
}

#[test]
fn patient_bodies_get_201_or_a_4xx_never_a_5xx_nor_an_echo() {
    let rig = api_rig();
    let w = &rig.world;
    runner(96)
        .run(&(mutated_patient(), any::<bool>()), |(body, update)| {
            let (method, path) = if update {
                (
                    reqwest::Method::PUT,
                    format!("/fhir/Patient/{}", rig.existing),
                )
            } else {
                (reqwest::Method::POST, "/fhir/Patient".to_string())
            };
            let text = body.to_string();
            let (status, answer) = rig.rt.block_on(async {
                let mut req = w
                    .app
                    .client
                    .request(method, w.app.url(&path))
                    .bearer_auth(&rig.token)
                    .header("content-type", "application/fhir+json")
                    .body(text.clone());
                if update {
                    req = req.header("if-match", "W/\"1\"");
                }
                let res = req.send().await.unwrap();
                (res.status(), res.text().await.unwrap())
            });
            prop_assert!(!status.is_server_error(), "{status} for {text}: {answer}");
            if status.is_client_error() {
                // The refusal names a field at most; it never repeats what was sent.
                for s in strings_in(&body) {
                    if s.chars().count() >= 6 && !KNOWN_WORDS.contains(&s.as_str()) {
                        prop_assert!(!answer.contains(&s), "{status} echoes {s:?}: {answer}");
                    }
                }
            }
            Ok(())
        })
        .unwrap();
}

/// Strings of the valid body that may appear in an answer (field names and codes).
const KNOWN_WORDS: &[&str] = &[
    "Patient",
    "urn:custodian:mrn",
    "http://hl7.org/fhir/sid/us-ssn",
    "female",
    "Proptest",
    "1970-03-04",
];

fn strings_in(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a.iter().flat_map(strings_in).collect(),
        Value::Object(o) => o.values().flat_map(strings_in).collect(),
        _ => Vec::new(),
    }
}

#[test]
fn search_queries_get_200_or_a_4xx_never_a_5xx() {
    let rig = api_rig();
    let w = &rig.world;
    let names = proptest::sample::select(vec![
        "family",
        "given",
        "name",
        "birthdate",
        "gender",
        "identifier",
        "_id",
        "_count",
        "_elements",
        "_sort",
        "_page",
        "patient",
        "subject",
        "date",
        "code",
        "unknown",
        "family:exact",
        "family:contains",
        "birthdate:missing",
    ]);
    let resource = proptest::sample::select(vec!["Patient", "Observation", "Claim"]);
    let pair = (names, hostile_text());
    let query = (resource, proptest::collection::vec(pair, 0..4));
    runner(96)
        .run(&query, |(resource, pairs)| {
            let mut url = url::Url::parse(&w.app.url(&format!("/fhir/{resource}"))).unwrap();
            for (k, v) in &pairs {
                url.query_pairs_mut().append_pair(k, v);
            }
            let (status, answer) = rig.rt.block_on(async {
                let res = w
                    .app
                    .client
                    .get(url.clone())
                    .bearer_auth(&rig.token)
                    .send()
                    .await
                    .unwrap();
                (res.status(), res.text().await.unwrap())
            });
            prop_assert!(
                !status.is_server_error(),
                "{status} for {}: {answer}",
                url.query().unwrap_or("")
            );
            Ok(())
        })
        .unwrap();
}

// ---------------------------------------------------------------------------------------
// The audit export reader.

#[test]
fn audit_export_reader_detects_every_change_to_an_event_and_never_panics() {
    use custodian::audit::ops::{self, ExportLine};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // A real trail: creates, reads, searches, a denial, a bad request.
    let (world, export) = rt.block_on(async {
        let w = World::new().await;
        let (_, token) = w.user("dr-export", &[Role::Clinician]);
        let id = w
            .create(&token, &patient_json("MRN-EXP", "Exportson"))
            .await;
        w.get(&format!("/fhir/Patient/{id}"), &token).await;
        w.get("/fhir/Patient?family=Exportson", &token).await;
        w.get("/api/admin/users", &token).await;
        w.get("/fhir/Patient?birthdate=bogus", &token).await;
        let mut out = Vec::new();
        ops::export(&mut w.app.db.conn(), None, None, &mut out).unwrap();
        (w, out)
    });
    drop(world);
    let text = String::from_utf8(export).unwrap();
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    let events: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].starts_with("{\"event\""))
        .collect();
    assert!(events.len() >= 5, "the export has events: {text}");
    let dir = tempfile::tempdir().unwrap();
    let config = TestApp::builder().config("postgres://nobody@127.0.0.1:1/none");
    let verify = |content: &str| {
        let file = dir.path().join("export.jsonl");
        std::fs::write(&file, content).unwrap();
        ops::verify_export(
            &file,
            config.audit.chain_key().unwrap(),
            config.audit.signing_key().unwrap().public_key(),
            Vec::new(),
            |_| {},
        )
    };
    assert!(
        matches!(verify(&text), Ok(Ok(_))),
        "the untouched export verifies"
    );
    // What an event line means: its parsed record and its hash (as bytes).
    let meaning = |line: &str| -> Option<Value> {
        let parsed: ExportLine = serde_json::from_str(line).ok()?;
        let mut v = serde_json::to_value(&parsed).ok()?;
        if let ExportLine::Event { hash, .. } = &parsed {
            let bytes = hex::decode(hash).ok()?;
            v["event"]["hash"] = json!(hex::encode(bytes));
        }
        Some(v)
    };
    let mutation = (
        proptest::sample::select(events.clone()),
        any::<prop::sample::Index>(),
        any::<u8>(),
        0u8..4,
    );
    runner(384)
        .run(&mutation, |(line_no, at, byte, kind)| {
            let mut changed = lines.clone();
            let what = match kind {
                // Replace one byte of an event line (kept valid UTF-8).
                0 | 1 => {
                    let mut b = changed[line_no].clone().into_bytes();
                    let i = at.index(b.len());
                    let c = if byte.is_ascii() && byte != b'\n' {
                        byte
                    } else {
                        b'0'
                    };
                    prop_assume!(b[i] != c && b[i].is_ascii());
                    b[i] = c;
                    changed[line_no] = String::from_utf8(b).unwrap();
                    "byte changed"
                }
                2 => {
                    changed.remove(line_no);
                    "event removed"
                }
                _ => {
                    let other = events[at.index(events.len())];
                    prop_assume!(other != line_no);
                    changed.swap(line_no, other);
                    "events swapped"
                }
            };
            let content = changed.join("\n") + "\n";
            let verdict = verify(&content);
            let same = kind <= 1
                && meaning(&changed[line_no]).is_some()
                && meaning(&changed[line_no]) == meaning(&lines[line_no]);
            match verdict {
                Ok(Ok(_)) => prop_assert!(
                    same,
                    "{what} in line {line_no} still verifies:\n{}",
                    changed[line_no]
                ),
                Ok(Err(_)) | Err(_) => prop_assert!(
                    !same,
                    "a change without meaning failed verification: {what} {line_no}"
                ),
            }
            Ok(())
        })
        .unwrap();
}
