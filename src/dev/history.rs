//! Demo access history for `custodian dev`: 30 days of synthetic, clearly-marked audit
//! events across the demo people — reads, searches naming several patients, a few
//! denials, one break-glass access — so the privacy review pages show something on a fresh
//! start. Every event carries the client application `synthetic-demo-history` (the mark;
//! no real request has it) and is appended through the chain store, so the chain still
//! verifies. Seeding runs once: an existing mark leaves the history alone.
//!
//! It also plants one instance of each detector's pattern ([`plant_patterns`]), so a fresh
//! `custodian dev` shows an alert of every detector kind (break-glass-review-overdue
//! aside: that needs a real grant whose review is overdue).

use crate::audit::store::{self, CheckpointPolicy};
use crate::audit::{
    Actor, AuditAction, AuditEvent, AuthMethod, ChainKey, CheckpointSigner, ClientId, DenyReason,
    Outcome, PurposeOfUse, ResourceType, RoleCode,
};
use crate::db::schema::{audit_events, patients};
use crate::db::users::{self, UserKind};
use crate::domain::{PatientId, UserId};
use crate::error::AppError;
use chrono::{DateTime, Duration, SubsecRound, Utc};
use diesel::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use uuid::Uuid;

/// The client application every synthetic history event names.
pub const MARK: &str = "synthetic-demo-history";
const DAYS: i64 = 30;
const SEED: u64 = 0x415D_17ED;

fn event(
    actor: &Actor,
    action: AuditAction,
    outcome: Outcome,
    patients: Vec<PatientId>,
    at: DateTime<Utc>,
    rng: &mut StdRng,
) -> Result<AuditEvent, AppError> {
    let mut e = AuditEvent::new(actor.clone(), action, outcome);
    e.occurred_at = at.trunc_subsecs(6);
    e.client_app = Some(ClientId::parse(MARK).map_err(|_| AppError::internal("mark"))?);
    e.resource_type = Some(ResourceType::Patient);
    if action != AuditAction::Search {
        e.resource_id = patients.first().map(|p| p.as_uuid());
    }
    e.patient_ids = patients;
    e.purpose_of_use = Some(PurposeOfUse::Treatment);
    e.source_ip = Some(std::net::IpAddr::from([10, 0, 0, rng.gen_range(2..40u8)]));
    Ok(e)
}

/// Appends the history (once). Returns how many events it added (0: already there).
pub fn seed_history(
    conn: &mut PgConnection,
    kr: &crate::crypto::Keyring,
    key: &ChainKey,
    signer: &CheckpointSigner,
    issuer: &str,
    now: DateTime<Utc>,
) -> Result<usize, AppError> {
    let present: i64 = audit_events::table
        .filter(audit_events::client_app.eq(MARK))
        .count()
        .get_result(conn)?;
    if present > 0 {
        return Ok(0);
    }
    let ids: Vec<Uuid> = patients::table
        .filter(patients::deleted_at.is_null())
        .order(patients::created_at.asc())
        .select(patients::id)
        .limit(60)
        .load(conn)?;
    if ids.len() < 10 {
        return Ok(0);
    }
    let pats: Vec<PatientId> = ids.into_iter().map(PatientId).collect();
    let person = |conn: &mut PgConnection, sub: &str, role: &str| -> Result<Actor, AppError> {
        let u = users::user_for(conn, issuer, sub, UserKind::Person)?;
        let role = RoleCode::parse(role).map_err(|_| AppError::internal("role code"))?;
        Ok(Actor::user(
            UserId(u.id.as_uuid()),
            vec![role],
            AuthMethod::Bearer,
        ))
    };
    let doctor = person(conn, "dr.demo", "clinician")?;
    let billing = person(conn, "billing.demo", "billing")?;
    let mut rng = StdRng::seed_from_u64(SEED);
    let start = now - Duration::days(DAYS);
    let mut events = Vec::new();
    for day in 0..DAYS {
        let base = start + Duration::days(day);
        // Working hours, a busier clinician than billing clerk.
        for _ in 0..rng.gen_range(6..14) {
            let at = base + Duration::minutes(rng.gen_range(7 * 60..19 * 60));
            let p = pats[rng.gen_range(0..pats.len())];
            events.push(event(
                &doctor,
                AuditAction::Read,
                Outcome::Permit,
                vec![p],
                at,
                &mut rng,
            )?);
        }
        let at = base + Duration::minutes(rng.gen_range(8 * 60..17 * 60));
        let from = rng.gen_range(0..pats.len() - 5);
        let found = pats[from..from + 5].to_vec();
        events.push(event(
            &doctor,
            AuditAction::Search,
            Outcome::Permit,
            found,
            at,
            &mut rng,
        )?);
        for _ in 0..rng.gen_range(1..4) {
            let at = base + Duration::minutes(rng.gen_range(9 * 60..17 * 60));
            let p = pats[rng.gen_range(0..pats.len())];
            let mut e = event(
                &billing,
                AuditAction::Read,
                Outcome::Permit,
                vec![p],
                at,
                &mut rng,
            )?;
            e.purpose_of_use = Some(PurposeOfUse::Payment);
            events.push(e);
        }
        // A denial now and then: a record outside the care team.
        if day % 6 == 2 {
            let at = base + Duration::minutes(rng.gen_range(20 * 60..23 * 60));
            let p = pats[pats.len() - 1];
            let outcome = Outcome::Deny(DenyReason::NoRelationship);
            events.push(event(
                &doctor,
                AuditAction::Read,
                outcome,
                vec![p],
                at,
                &mut rng,
            )?);
        }
    }
    // One break-glass access, at night.
    let at = start + Duration::days(DAYS - 3) + Duration::hours(2);
    let mut e = event(
        &doctor,
        AuditAction::Read,
        Outcome::Permit,
        vec![pats[pats.len() - 1]],
        at,
        &mut rng,
    )?;
    e.purpose_of_use = Some(PurposeOfUse::EmergencyTreatment);
    e.break_glass_grant_id = Some(overdue_grant(conn, kr, &doctor, pats[pats.len() - 1], at)?);
    events.push(e);
    plant_patterns(
        conn,
        issuer,
        &pats,
        &doctor,
        &billing,
        now,
        &mut rng,
        &mut events,
    )?;
    events.sort_by_key(|e| e.occurred_at);
    let policy = CheckpointPolicy {
        every_events: 1,
        every_secs: 1,
    };
    store::append_batch(conn, key, signer, policy, &events)?;
    Ok(events.len())
}

/// The grant of the demo's break-glass access: a real emergency grant of the clinician,
/// used, whose privacy review fell due a day later and never came (so the detectors
/// raise break-glass-review-overdue). Its justification is sealed like any other.
fn overdue_grant(
    conn: &mut PgConnection,
    kr: &crate::crypto::Keyring,
    doctor: &Actor,
    patient: PatientId,
    at: DateTime<Utc>,
) -> Result<Uuid, AppError> {
    let user = doctor
        .user_id
        .ok_or_else(|| AppError::internal("demo clinician"))?;
    let facility: Uuid = patients::table
        .find(patient.as_uuid())
        .select(patients::facility_id)
        .first(conn)?;
    let request = crate::policy::break_glass::ValidRequest {
        reason: crate::policy::break_glass::DEFAULT_REASONS[0].to_string(),
        justification: "Synthetic demo: unconscious patient in the emergency department."
            .to_string(),
        minutes: 60,
    };
    let grant = crate::db::break_glass::insert(
        conn,
        kr,
        user,
        patient,
        crate::domain::FacilityId::from(facility),
        crate::policy::break_glass::Mode::Emergency,
        &request,
        at,
        1,
        None,
    )?;
    Ok(grant.id.as_uuid())
}

/// One instance of each detector's pattern (docs/privacy-detection.md), two days ago at
/// fixed UTC hours: a restricted record, a co-worker's record and a record of the same
/// family name read by the billing clerk (on no care team); three refusals of the
/// clinician within minutes; 25 failed sign-ins from one address; every demo patient
/// read by the billing clerk within an hour (when there are more than 50); 30 patient
/// searches by the clinician within ten minutes; a read at 03:00 UTC (outside the default
/// working hours). The facts are set here too: the restricted level, a linked workforce
/// account, and the clerk's family-name index copied from a patient's (no name is read).
#[allow(clippy::too_many_arguments)]
fn plant_patterns(
    conn: &mut PgConnection,
    issuer: &str,
    pats: &[PatientId],
    doctor: &Actor,
    billing: &Actor,
    now: DateTime<Utc>,
    rng: &mut StdRng,
    events: &mut Vec<AuditEvent>,
) -> Result<(), AppError> {
    use crate::db::schema::users as u;
    use crate::policy::Confidentiality;
    let n = pats.len();
    let (restricted, coworker, namesake) = (pats[n - 5], pats[n - 6], pats[n - 7]);
    crate::db::break_glass::set_confidentiality(
        conn,
        restricted,
        Confidentiality::Restricted,
        "synthetic demo (custodian dev)",
        None,
    )?;
    let colleague = users::user_for(conn, issuer, "colleague.demo", UserKind::Person)?;
    users::grant_role(
        conn,
        colleague.id,
        crate::policy::Role::Clinician,
        "synthetic demo (custodian dev)",
        None,
    )?;
    users::link_patient(conn, colleague.id, Some(coworker))?;
    let clerk = billing
        .user_id
        .ok_or_else(|| AppError::internal("demo clerk"))?;
    let index: Vec<u8> = patients::table
        .find(namesake.as_uuid())
        .select(patients::family_index)
        .first(conn)?;
    diesel::update(u::table.find(clerk))
        .set((
            u::family_index.eq(Some(index)),
            u::family_index_source.eq(Some("admin")),
        ))
        .execute(conn)?;

    // Two days ago, hours aligned to UTC (the detectors' windows are).
    let ts = (now - Duration::days(2)).timestamp();
    let midnight = DateTime::from_timestamp(ts - ts.rem_euclid(86_400), 0).unwrap_or(now);
    let at = |h: i64, m: i64| midnight + Duration::hours(h) + Duration::minutes(m);
    let read = |who: &Actor, p: PatientId, t: DateTime<Utc>, rng: &mut StdRng| {
        event(who, AuditAction::Read, Outcome::Permit, vec![p], t, rng)
    };
    for (i, p) in [restricted, coworker, namesake].into_iter().enumerate() {
        events.push(read(billing, p, at(10, i as i64), rng)?);
    }
    for i in 0..3 {
        let deny = Outcome::Deny(DenyReason::NoRelationship);
        events.push(event(
            doctor,
            AuditAction::Read,
            deny,
            vec![pats[n - 1]],
            at(11, i),
            rng,
        )?);
    }
    for i in 0..25 {
        let deny = Outcome::Deny(DenyReason::InvalidCredentials);
        let mut e = event(
            &Actor::anonymous(),
            AuditAction::Read,
            deny,
            Vec::new(),
            at(12, 0),
            rng,
        )?;
        e.occurred_at += Duration::seconds(i);
        e.source_ip = Some(std::net::IpAddr::from([10, 0, 9, 250]));
        events.push(e);
    }
    if n > 50 {
        for (i, p) in pats.iter().enumerate() {
            events.push(read(
                billing,
                *p,
                at(13, 0) + Duration::seconds(i as i64 * 20),
                rng,
            )?);
        }
    }
    for i in 0..30 {
        let p = pats[i % n];
        let t = at(14, 0) + Duration::seconds(i as i64 * 15);
        events.push(event(
            doctor,
            AuditAction::Search,
            Outcome::Permit,
            vec![p],
            t,
            rng,
        )?);
    }
    events.push(read(doctor, pats[n - 2], at(3, 0), rng)?);
    Ok(())
}
