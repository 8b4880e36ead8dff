//! Synthetic data for `custodian dev`: two facilities, a population of generated
//! patients with observations, clinical notes and claims, and the demo principals. Everything is
//! made up from small built-in lists with a fixed seed, so every developer gets the same
//! population:
//!
//! - names from lists of common given and family names (combinations are arbitrary);
//! - MRNs `SYN-000001` … (the `SYN-` prefix marks them synthetic);
//! - SSNs `123-45-0001` … — generated to pass the SSN validator (the 9xx range is refused
//!   by it), never collected from anyone. They are test values, not real numbers;
//! - phone numbers in the fictional 555-01xx range, addresses on "Synthetic Street".
//!
//! Seeding runs once: patients are inserted in a fixed order in batches (one transaction
//! each), so the number already present says where to resume and a complete population
//! is left alone.

use crate::crypto::Keyring;
use crate::db::claims::{self, NewClaim, NewClaimItem};
use crate::db::phi::{self, NewDocumentReference, NewObservation, NewPatient};
use crate::db::schema::{facilities, patients};
use crate::db::users::{self, UserKind};
use crate::domain::{FacilityId, PatientId, UserId};
use crate::error::AppError;
use crate::policy::Role;
use chrono::{Duration, NaiveDate, TimeZone, Utc};
use diesel::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub const FACILITY_NAMES: [&str; 2] = [
    "SYN Riverside General Hospital",
    "SYN Lakeside Community Clinic",
];
const SEED: u64 = 0x5EED_C057;
const REASON: &str = "synthetic demo principal (custodian dev)";

const GIVEN_FEMALE: &[&str] = &[
    "Mary",
    "Patricia",
    "Jennifer",
    "Linda",
    "Elizabeth",
    "Barbara",
    "Susan",
    "Jessica",
    "Sarah",
    "Karen",
    "Lisa",
    "Nancy",
    "Sandra",
    "Ashley",
    "Emily",
    "Michelle",
    "Olivia",
    "Emma",
    "Sophia",
    "Maria",
];
const GIVEN_MALE: &[&str] = &[
    "James", "Robert", "John", "Michael", "David", "William", "Richard", "Joseph", "Thomas",
    "Charles", "Daniel", "Matthew", "Anthony", "Mark", "Steven", "Paul", "Andrew", "Joshua",
    "Kevin", "Brian",
];
const FAMILY: &[&str] = &[
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Garcia",
    "Miller",
    "Davis",
    "Rodriguez",
    "Martinez",
    "Hernandez",
    "Lopez",
    "Gonzalez",
    "Wilson",
    "Anderson",
    "Thomas",
    "Taylor",
    "Moore",
    "Jackson",
    "Martin",
    "Lee",
    "Perez",
    "Thompson",
    "White",
    "Harris",
    "Sanchez",
    "Clark",
    "Ramirez",
    "Lewis",
    "Robinson",
];
const CITIES: &[&str] = &[
    "Springfield",
    "Riverton",
    "Lakeview",
    "Fairmont",
    "Greenville",
];

/// What to seed.
#[derive(Clone, Debug)]
pub struct SeedPlan {
    /// The issuer of the demo principals' tokens.
    pub issuer: String,
    pub patients: usize,
    /// dr.demo is on the care team of the first this-many patients.
    pub care_team: usize,
    pub batch: usize,
}

impl SeedPlan {
    /// The population `custodian dev` seeds.
    pub fn dev(issuer: &str) -> SeedPlan {
        SeedPlan {
            issuer: issuer.to_string(),
            patients: 1000,
            care_team: 200,
            batch: 100,
        }
    }
}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeedReport {
    pub patients_created: usize,
    pub observations_created: usize,
    pub notes_created: usize,
    pub claims_created: usize,
    pub already_present: usize,
}

/// The demo principals: subject, roles, and whether they belong to the first facility.
pub const DEMO_PRINCIPALS: [(&str, &[Role]); 5] = [
    ("dr.demo", &[Role::Clinician]),
    ("billing.demo", &[Role::Billing]),
    ("admin.demo", &[Role::Admin]),
    ("patient.demo", &[Role::Patient]),
    ("po.demo", &[Role::PrivacyOfficer]),
];

/// The display name of a demo principal in the console.
pub fn demo_display_name(subject: &str) -> &'static str {
    match subject {
        "dr.demo" => "Demo clinician",
        "billing.demo" => "Demo billing clerk",
        "admin.demo" => "Demo administrator",
        "patient.demo" => "Demo patient",
        "po.demo" => "Demo privacy officer",
        _ => "Demo person",
    }
}

fn facility(conn: &mut PgConnection, name: &str) -> Result<FacilityId, AppError> {
    let found: Option<FacilityId> = facilities::table
        .filter(facilities::name.eq(name))
        .select(facilities::id)
        .order(facilities::created_at)
        .first(conn)
        .optional()?;
    match found {
        Some(id) => Ok(id),
        None => phi::insert_facility(conn, name),
    }
}

/// The synthetic MRN of patient `i` (0-based).
pub fn mrn(i: usize) -> String {
    format!("SYN-{:06}", i + 1)
}

/// The synthetic SSN of patient `i`: `123-45-0001` …, valid in form, made up.
pub fn ssn(i: usize) -> String {
    format!("123-45-{:04}", (i % 9999) + 1)
}

/// The generated patient `i` (deterministic).
pub fn patient(i: usize, facility_id: FacilityId) -> NewPatient {
    let mut rng = StdRng::seed_from_u64(SEED ^ (i as u64).wrapping_mul(0x9E37_79B9));
    let female = rng.gen_bool(0.5);
    let given = if female {
        GIVEN_FEMALE[rng.gen_range(0..GIVEN_FEMALE.len())]
    } else {
        GIVEN_MALE[rng.gen_range(0..GIVEN_MALE.len())]
    };
    let family = FAMILY[rng.gen_range(0..FAMILY.len())];
    let birth_date = NaiveDate::from_ymd_opt(1935, 1, 1).unwrap_or_default()
        + Duration::days(rng.gen_range(0..(85 * 365)));
    let phone = format!("555-01{:02}", rng.gen_range(0..100));
    let city = CITIES[rng.gen_range(0..CITIES.len())];
    NewPatient {
        facility_id,
        mrn: mrn(i),
        ssn: Some(ssn(i)),
        family: family.to_string(),
        given: given.to_string(),
        birth_date,
        gender: if female { "female" } else { "male" }.to_string(),
        telecom: Some(serde_json::json!([{ "system": "phone", "value": phone, "use": "home" }])),
        address: Some(serde_json::json!([{
            "line": [format!("{} Synthetic Street", rng.gen_range(1..999))],
            "city": city, "postalCode": "00000", "country": "US"
        }])),
    }
}

fn observations(i: usize, patient_id: PatientId) -> Vec<NewObservation> {
    let mut rng = StdRng::seed_from_u64(SEED ^ 0x0B5 ^ (i as u64));
    let base = Utc
        .with_ymd_and_hms(2026, 1, 1, 9, 0, 0)
        .single()
        .unwrap_or_else(Utc::now);
    let vitals: [(&str, &str, f64, &str); 3] = [
        ("8867-4", "Heart rate", rng.gen_range(55.0..100.0), "/min"),
        (
            "8480-6",
            "Systolic blood pressure",
            rng.gen_range(100.0..150.0),
            "mm[Hg]",
        ),
        ("29463-7", "Body weight", rng.gen_range(45.0..120.0), "kg"),
    ];
    vitals
        .into_iter()
        .map(|(code, display, value, unit)| NewObservation {
            patient_id,
            status: "final".into(),
            code: code.into(),
            code_display: Some(display.into()),
            value: serde_json::json!({ "valueQuantity": {
                "value": (value * 10.0).round() / 10.0, "unit": unit,
                "system": "http://unitsofmeasure.org", "code": unit
            }}),
            effective_at: base + Duration::days(rng.gen_range(0..300)),
        })
        .collect()
}

fn note(i: usize, patient_id: PatientId, author: UserId) -> NewDocumentReference {
    const TEXTS: [&str; 3] = [
        "Synthetic progress note. Routine follow-up; vitals reviewed; no acute concerns. Continue current plan.",
        "Synthetic progress note. Seen for seasonal allergy symptoms; advised saline rinse; review in 4 weeks.",
        "Synthetic progress note. Annual check-up; immunisations up to date; lifestyle advice given.",
    ];
    NewDocumentReference {
        patient_id,
        author_id: Some(author),
        doc_type: Some("11506-3".into()),
        date: Utc.with_ymd_and_hms(2026, 2, 1, 10, 0, 0).single(),
        text: TEXTS[i % TEXTS.len()].into(),
        status: "current".into(),
    }
}

fn claim(i: usize, patient_id: PatientId) -> NewClaim {
    // Common outpatient CPT-style codes with made-up amounts in cents.
    const SERVICES: [(&str, i64); 4] = [
        ("99213", 9_200),
        ("99214", 13_100),
        ("36415", 1_000),
        ("85025", 1_100),
    ];
    let mut rng = StdRng::seed_from_u64(SEED ^ 0xC1A ^ (i as u64));
    let items: Vec<NewClaimItem> = (0..rng.gen_range(1..=3))
        .map(|k| {
            let (code, amount_cents) = SERVICES[(i + k) % SERVICES.len()];
            NewClaimItem {
                seq: k as i32 + 1,
                code: code.into(),
                amount_cents,
            }
        })
        .collect();
    NewClaim {
        patient_id,
        provider: "SYN Riverside General Hospital billing office".into(),
        status: if i % 5 == 4 { "draft" } else { "active" }.into(),
        total_cents: items.iter().map(|it| it.amount_cents).sum(),
        currency: "USD".into(),
        items,
    }
}

fn seeded_count(conn: &mut PgConnection, facility_ids: &[FacilityId]) -> Result<usize, AppError> {
    let n: i64 = patients::table
        .filter(patients::facility_id.eq_any(facility_ids))
        .count()
        .get_result(conn)?;
    Ok(usize::try_from(n).unwrap_or(0))
}

/// Seeds what is missing; `progress(done, total)` is called after each batch.
pub fn seed(
    conn: &mut PgConnection,
    kr: &Keyring,
    plan: &SeedPlan,
    mut progress: impl FnMut(usize, usize),
) -> Result<SeedReport, AppError> {
    let (facility_ids, principals) = conn.transaction(|c| {
        let ids = [
            facility(c, FACILITY_NAMES[0])?,
            facility(c, FACILITY_NAMES[1])?,
        ];
        let mut principals = Vec::new();
        for (sub, roles) in DEMO_PRINCIPALS {
            let u = users::user_for(c, &plan.issuer, sub, UserKind::Person)?;
            // A name to find them by in the console (one given there is kept).
            {
                use crate::db::schema::users::dsl;
                diesel::update(dsl::users.find(u.id).filter(dsl::display_name.is_null()))
                    .set(dsl::display_name.eq(Some(demo_display_name(sub))))
                    .execute(c)?;
            }
            for role in roles {
                users::grant_role(c, u.id, *role, REASON, None)?;
            }
            if u.facility_id.is_none() && sub != "patient.demo" {
                users::set_facility(c, u.id, Some(ids[0]))?;
            }
            principals.push((sub, u.id));
        }
        Ok::<_, AppError>((ids, principals))
    })?;
    let principal = |name: &str| {
        principals
            .iter()
            .find(|(s, _)| *s == name)
            .map(|(_, id)| *id)
            .unwrap_or_default()
    };
    let doctor = principal("dr.demo");

    let mut report = SeedReport::default();
    let start = seeded_count(conn, &facility_ids)?;
    report.already_present = start;
    let mut i = start;
    while i < plan.patients {
        let end = (i + plan.batch.max(1)).min(plan.patients);
        let (obs, notes, claims) = conn.transaction(|c| {
            let (mut obs, mut notes, mut claims) = (0, 0, 0);
            for n in i..end {
                // Most patients at the hospital, every fourth at the clinic.
                let facility_id = facility_ids[usize::from(n % 4 == 3)];
                let p = phi::insert_patient(c, kr, &patient(n, facility_id))?;
                let patient_id = p.id;
                for o in observations(n, patient_id) {
                    phi::insert_observation(c, kr, &o)?;
                    obs += 1;
                }
                phi::insert_document_reference(c, kr, &note(n, patient_id, doctor))?;
                notes += 1;
                claims::insert(c, kr, &claim(n, patient_id))?;
                claims += 1;
                if n < plan.care_team {
                    users::add_to_care_team(
                        c,
                        patient_id,
                        doctor,
                        "synthetic care team (custodian dev)",
                        None,
                    )?;
                }
            }
            Ok::<_, AppError>((obs, notes, claims))
        })?;
        report.patients_created += end - i;
        report.observations_created += obs;
        report.notes_created += notes;
        report.claims_created += claims;
        i = end;
        progress(i, plan.patients);
    }

    // patient.demo is the first synthetic patient.
    if let Some(first) = phi::find_patient_by_mrn(conn, kr, &mrn(0))? {
        users::link_patient(conn, principal("patient.demo"), Some(first.id))?;
    }
    Ok(report)
}

/// What [`enrol_console_people`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConsoleReport {
    /// Demo people enrolled in TOTP by this run.
    pub enrolled: Vec<&'static str>,
    /// Whether this run created the emergency account.
    pub emergency_created: bool,
}

/// Pre-enrols the demo console people (admin.demo, po.demo) in TOTP with their
/// development secrets, and creates the development emergency account (admin role, the
/// password hash `emergency_hash` gives, TOTP pre-enrolled likewise). Leaves alone
/// whatever exists already (an enrolment someone redid in the console stays theirs).
pub fn enrol_console_people(
    conn: &mut PgConnection,
    kr: &Keyring,
    issuer: &str,
    totp: &super::totp::DevTotpKey,
    emergency_hash: impl FnOnce() -> Result<String, AppError>,
) -> Result<ConsoleReport, AppError> {
    use super::totp::EMERGENCY_ACCOUNT;
    use crate::console::emergency::{AccountName, ISSUER as EMERGENCY_ISSUER};
    use crate::console::store::{emergency, totp as totp_store};
    let secret = |who: &str| {
        totp.secret(who)
            .map_err(|e| AppError::Internal(e.context("development TOTP secret")))
    };
    let now = Utc::now();
    let mut report = ConsoleReport::default();
    for who in super::totp::PRE_ENROLLED {
        if who == EMERGENCY_ACCOUNT {
            continue;
        }
        let user = users::user_for(conn, issuer, who, UserKind::Person)?;
        if totp_store::enrol_confirmed(conn, kr, user.id, &secret(who)?, now)? {
            report.enrolled.push(who);
        }
    }
    if emergency::find(conn, EMERGENCY_ACCOUNT)?.is_none() {
        let name = AccountName::parse(EMERGENCY_ACCOUNT)
            .ok_or_else(|| AppError::internal("emergency account name"))?;
        let hash = emergency_hash()?;
        // Enrolled first, so that the account's creation keeps this enrolment.
        let user = users::user_for(conn, EMERGENCY_ISSUER, EMERGENCY_ACCOUNT, UserKind::Person)?;
        if totp_store::enrol_confirmed(conn, kr, user.id, &secret(EMERGENCY_ACCOUNT)?, now)? {
            report.enrolled.push(EMERGENCY_ACCOUNT);
        }
        report.emergency_created = emergency::create(conn, kr, &name, &hash)?.is_ok();
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_identifiers_pass_the_validators_and_look_synthetic() {
        for i in [0, 1, 122, 999, 9998, 9999] {
            let s = ssn(i);
            assert!(crate::fhir::types::Ssn::parse(&s).is_ok(), "{s}");
            let m = mrn(i);
            assert!(m.starts_with("SYN-"));
            assert!(crate::fhir::types::Mrn::parse(&m).is_ok(), "{m}");
        }
        assert_eq!(mrn(122), "SYN-000123");
    }

    #[test]
    fn generation_is_deterministic() {
        let f = FacilityId(uuid::Uuid::nil());
        let (a, b) = (patient(7, f), patient(7, f));
        assert_eq!(
            (a.family, a.given, a.birth_date),
            (b.family, b.given, b.birth_date)
        );
    }
}
