//! The detectors themselves: pure functions of a batch of audit events, the facts about
//! the patients and people in it ([`Facts`]) and the counts of the open windows
//! ([`Windows`]). No database here, so each detector is tested on crafted streams.
//!
//! - **restricted-record**: a permitted access to an R or V record by a person not on the
//!   patient's care team (and not the patient themself): one alert per person, patient
//!   and UTC day.
//! - **workforce-patient**: a permitted access to the record of a patient who is linked to
//!   a workforce account (a user with a role other than `patient`), by another person not
//!   on that patient's care team: one alert per person, patient and UTC day.
//! - **repeated-denial**: `detect.denials_threshold` refusals for lack of a care
//!   relationship (`no-relationship`) of one person within a window.
//! - **auth-failure-spike**: `detect.failures_threshold` refusals answered 401/403/429
//!   (failed sign-ins, bad or missing credentials, missing scope or role, revoked, rate
//!   limited; an aggregated flood counts its `occurrences`) per source address, per
//!   client and per person within a window.
//!
//! - **same-family-name**: a permitted access to a patient whose family-name blind index
//!   equals the accessing person's (see [`Facts::same_family`]), by a person not on the
//!   patient's care team: one alert per person, patient and UTC day.
//! - **name-search-sweep**: `detect.name_search_threshold` permitted Patient searches (the trail
//!   records that a Patient search ran, never its values) of one person within
//!   `detect.name_search_window_mins`.
//! - **off-hours**: a permitted access to patient data by a person outside the working
//!   hours of their facility (its own hours and time zone, else the `[detect]` defaults):
//!   one alert per person and local day. Service clients are exempt (batch jobs run at
//!   night by design).
//!
//! - **bulk-access**: more distinct patients accessed by one person within
//!   `detect.bulk_window_mins` than `detect.bulk_factor` times both the person's own mean
//!   and their role's mean per active window over the previous `detect.bulk_baseline_days`
//!   (and at least `detect.bulk_min_patients`). The means come from [`Baselines`], asked
//!   only when a window reaches the minimum.
//!
//! Windows are tumbling (aligned to the epoch): a pattern split across two windows may
//! stay below the threshold in both. An alert names its window in its `dedup_key`, so a
//! replay of the same events raises nothing new.

use super::config::{DetectConfig, WorkHours};
use crate::db::alerts::{AlertKind, MAX_EVIDENCE, NewAlert};
use crate::domain::{GrantId, PatientId, UserId};
use crate::policy::Confidentiality;
use chrono::{DateTime, Timelike, Utc};
use diesel::prelude::*;
use std::collections::{HashMap, HashSet};

/// The columns of an audit event the detectors read.
#[derive(Clone, Debug, Queryable, Selectable)]
#[diesel(table_name = crate::schema::audit_events, check_for_backend(diesel::pg::Pg))]
pub struct Event {
    pub seq: i64,
    pub occurred_at: DateTime<Utc>,
    pub actor_user_id: Option<UserId>,
    pub actor_client_id: Option<String>,
    pub actor_roles: Vec<String>,
    pub client_app: Option<String>,
    pub action: String,
    pub resource_type: Option<String>,
    pub patient_ids: Vec<PatientId>,
    pub outcome: String,
    pub deny_reason: Option<String>,
    pub break_glass_grant_id: Option<uuid::Uuid>,
    pub source_ip: Option<String>,
    pub occurrences: Option<i32>,
}

/// What the detectors need to know about the patients and people of a batch (current
/// state, read once per batch).
#[derive(Clone, Debug, Default)]
pub struct Facts {
    /// Patients whose record is R or V (absent: N).
    pub restricted: HashMap<PatientId, Confidentiality>,
    /// User accounts linked to each patient, and whether each holds a workforce role.
    pub linked: HashMap<PatientId, Vec<(UserId, bool)>>,
    /// (patient, person) pairs of the care teams.
    pub care: HashSet<(PatientId, UserId)>,
    /// (patient, person) pairs whose family-name blind indexes are equal (compared as
    /// keyed hashes when the facts are read; no name is ever decrypted).
    pub same_family: HashSet<(PatientId, UserId)>,
    /// The working hours of each person's facility (absent: the `[detect]` defaults).
    pub hours: HashMap<UserId, WorkHours>,
}

impl Facts {
    fn on_care_team(&self, patient: PatientId, user: UserId) -> bool {
        self.care.contains(&(patient, user))
    }

    fn is_own_record(&self, patient: PatientId, user: UserId) -> bool {
        self.linked
            .get(&patient)
            .is_some_and(|l| l.iter().any(|(u, _)| *u == user))
    }

    fn is_workforce_patient(&self, patient: PatientId) -> bool {
        self.linked
            .get(&patient)
            .is_some_and(|l| l.iter().any(|(_, workforce)| *workforce))
    }
}

/// Actions that touch a patient's data.
const DATA_ACTIONS: &[&str] = &["read", "search", "create", "update", "delete", "export"];

/// Refusal reasons answered 401, 403 or 429 (a `no-relationship` refusal is a 404 on a
/// record and has its own detector).
const FAILURE_REASONS: &[&str] = &[
    "not-authenticated",
    "invalid-credentials",
    "missing-scope",
    "missing-role",
    "rate-limited",
    "revoked",
    "step-up-required",
];

/// The means a bulk-access window is measured against: (the person's own, their role's)
/// distinct patients per active window before `window_start`. The runner computes them
/// from the trail; tests give fixed numbers.
pub trait Baselines {
    fn means(&mut self, user: UserId, roles: &[String], window_start: DateTime<Utc>) -> (f64, f64);
}

impl<F: FnMut(UserId, &[String], DateTime<Utc>) -> (f64, f64)> Baselines for F {
    fn means(&mut self, user: UserId, roles: &[String], window_start: DateTime<Utc>) -> (f64, f64) {
        self(user, roles, window_start)
    }
}

/// One person's bulk-access window.
#[derive(Clone, Debug)]
struct Bulk {
    bucket: i64,
    patients: HashSet<PatientId>,
    seqs: Vec<i64>,
    /// Distinct patients that raise the alert, once the baselines were asked.
    threshold: Option<(u64, f64, f64)>,
    fired: bool,
}

/// One open window of one subject.
#[derive(Clone, Debug)]
struct Counter {
    bucket: i64,
    count: u64,
    seqs: Vec<i64>,
    fired: bool,
}

/// Which windowed rule a counter belongs to (with its subject).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Subject {
    Denials(UserId),
    FailuresAddress(String),
    FailuresClient(String),
    FailuresPerson(UserId),
    NameSearches(UserId),
}

/// The open windows of the windowed detectors. Rebuilt by replaying the trail when a
/// runner takes over, so it needs no table of its own.
#[derive(Clone, Debug, Default)]
pub struct Windows {
    counters: HashMap<Subject, Counter>,
    bulk: HashMap<UserId, Bulk>,
}

/// Most open windows kept; beyond, the oldest are dropped (a flood of distinct sources
/// then may go unnoticed, it does not exhaust memory).
const MAX_COUNTERS: usize = 200_000;

impl Windows {
    pub fn len(&self) -> usize {
        self.counters.len() + self.bulk.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Counts `weight` for `subject` at `at`; `Some((count, seqs, bucket))` the first time
    /// the window reaches `threshold`.
    fn count(
        &mut self,
        subject: Subject,
        at: DateTime<Utc>,
        window_secs: i64,
        weight: u64,
        seq: i64,
        threshold: u32,
    ) -> Option<(u64, Vec<i64>, i64)> {
        let bucket = at.timestamp().div_euclid(window_secs);
        let c = self.counters.entry(subject).or_insert(Counter {
            bucket,
            count: 0,
            seqs: Vec::new(),
            fired: false,
        });
        if c.bucket != bucket {
            *c = Counter {
                bucket,
                count: 0,
                seqs: Vec::new(),
                fired: false,
            };
        }
        c.count = c.count.saturating_add(weight);
        if c.seqs.len() < MAX_EVIDENCE {
            c.seqs.push(seq);
        }
        if !c.fired && c.count >= u64::from(threshold) {
            c.fired = true;
            return Some((c.count, c.seqs.clone(), bucket));
        }
        None
    }

    /// Drops windows that closed before `now` (and the oldest beyond [`MAX_COUNTERS`]).
    fn prune(&mut self, cfg: &DetectConfig, now: DateTime<Utc>) {
        let t = now.timestamp();
        let denials = i64::from(cfg.denials_window_mins) * 60;
        let failures = i64::from(cfg.failures_window_mins) * 60;
        let searches = i64::from(cfg.name_search_window_mins) * 60;
        self.counters.retain(|s, c| {
            let w = match s {
                Subject::Denials(_) => denials,
                Subject::NameSearches(_) => searches,
                _ => failures,
            };
            (c.bucket + 1) * w > t
        });
        let bulk = i64::from(cfg.bulk_window_mins) * 60;
        self.bulk.retain(|_, b| (b.bucket + 1) * bulk > t);
        if self.counters.len() > MAX_COUNTERS {
            let mut buckets: Vec<i64> = self.counters.values().map(|c| c.bucket).collect();
            buckets.sort_unstable();
            let cut = buckets[self.counters.len() - MAX_COUNTERS];
            self.counters.retain(|_, c| c.bucket > cut);
        }
    }
}

/// Runs every detector over `events` (in sequence order); returns the alerts to raise.
pub fn run(
    cfg: &DetectConfig,
    facts: &Facts,
    windows: &mut Windows,
    baselines: &mut dyn Baselines,
    events: &[Event],
) -> Vec<NewAlert> {
    let mut daily: HashMap<String, NewAlert> = HashMap::new();
    let mut out = Vec::new();
    let default_hours = cfg.default_hours();
    for e in events {
        record_access(facts, e, &mut daily);
        off_hours(facts, default_hours, e, &mut daily);
        windowed(cfg, windows, e, &mut out);
        name_searches(cfg, windows, e, &mut out);
        bulk(cfg, windows, baselines, e, &mut out);
    }
    if let Some(last) = events.last() {
        windows.prune(cfg, last.occurred_at);
    }
    let mut daily: Vec<NewAlert> = daily.into_values().collect();
    daily.sort_by_key(|a| a.evidence_seqs.first().copied());
    daily.extend(out);
    daily
}

/// restricted-record and workforce-patient.
fn record_access(facts: &Facts, e: &Event, daily: &mut HashMap<String, NewAlert>) {
    let Some(user) = e.actor_user_id else {
        return;
    };
    if e.outcome != "permit" || !DATA_ACTIONS.contains(&e.action.as_str()) {
        return;
    }
    let day = e.occurred_at.format("%Y-%m-%d");
    for &patient in &e.patient_ids {
        if facts.on_care_team(patient, user) || facts.is_own_record(patient, user) {
            continue;
        }
        let level = facts.restricted.get(&patient).copied();
        let mut hit = |kind: AlertKind, reason: &'static str| {
            let key = NewAlert::person_key(kind, user, format_args!("{patient}:{day}"));
            let a = daily.entry(key.clone()).or_insert_with(|| {
                NewAlert::about(kind, reason, key, e.occurred_at)
                    .person(Some(user))
                    .patient(Some(patient))
                    .grant(e.break_glass_grant_id.map(GrantId::from))
                    .figures(vec![0])
            });
            a.figures[0] += 1;
            if a.evidence_seqs.len() < MAX_EVIDENCE {
                a.evidence_seqs.push(e.seq);
            }
        };
        match level {
            Some(Confidentiality::VeryRestricted) => {
                hit(AlertKind::RestrictedRecord, "very-restricted")
            }
            Some(Confidentiality::Restricted) => hit(AlertKind::RestrictedRecord, "restricted"),
            _ => {}
        }
        if facts.is_workforce_patient(patient) {
            hit(AlertKind::WorkforcePatient, "linked-account");
        }
        if facts.same_family.contains(&(patient, user)) {
            hit(AlertKind::SameFamilyName, "family-name-index");
        }
    }
}

/// off-hours.
fn off_hours(facts: &Facts, default: WorkHours, e: &Event, daily: &mut HashMap<String, NewAlert>) {
    let Some(user) = e.actor_user_id else {
        return;
    };
    if e.outcome != "permit"
        || e.patient_ids.is_empty()
        || !DATA_ACTIONS.contains(&e.action.as_str())
        || e.actor_roles.iter().any(|r| r == "service")
    {
        return;
    }
    let hours = facts.hours.get(&user).copied().unwrap_or(default);
    let local = e.occurred_at.with_timezone(&hours.tz);
    if (hours.start..hours.end).contains(&local.hour()) {
        return;
    }
    let kind = AlertKind::OffHours;
    let key = NewAlert::person_key(kind, user, local.format("%Y-%m-%d"));
    let a = daily.entry(key.clone()).or_insert_with(|| {
        NewAlert::about(kind, "outside-working-hours", key, e.occurred_at)
            .person(Some(user))
            .patient(e.patient_ids.first().copied())
            .figures(vec![0, i64::from(hours.start), i64::from(hours.end)])
    });
    a.figures[0] += 1;
    if a.evidence_seqs.len() < MAX_EVIDENCE {
        a.evidence_seqs.push(e.seq);
    }
}

/// name-search-sweep: every permitted Patient search of a person counts (the trail does
/// not say which parameters a search used, and must not: they are PHI). Refused searches
/// are the failure detectors' business.
fn name_searches(cfg: &DetectConfig, windows: &mut Windows, e: &Event, out: &mut Vec<NewAlert>) {
    let Some(user) = e.actor_user_id else {
        return;
    };
    if e.outcome != "permit"
        || e.action != "search"
        || e.resource_type.as_deref() != Some("Patient")
    {
        return;
    }
    let weight = e
        .occurrences
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(1)
        .max(1);
    let w = i64::from(cfg.name_search_window_mins) * 60;
    let Some((count, seqs, bucket)) = windows.count(
        Subject::NameSearches(user),
        e.occurred_at,
        w,
        weight,
        e.seq,
        cfg.name_search_threshold,
    ) else {
        return;
    };
    let kind = AlertKind::NameSearchSweep;
    let key = NewAlert::person_key(kind, user, bucket);
    out.push(
        NewAlert::about(kind, "patient-searches", key, e.occurred_at)
            .person(Some(user))
            .figures(vec![
                count as i64,
                i64::from(cfg.name_search_window_mins),
                i64::from(cfg.name_search_threshold),
            ])
            .evidence(seqs),
    );
}

/// bulk-access.
fn bulk(
    cfg: &DetectConfig,
    windows: &mut Windows,
    baselines: &mut dyn Baselines,
    e: &Event,
    out: &mut Vec<NewAlert>,
) {
    let Some(user) = e.actor_user_id else {
        return;
    };
    if e.outcome != "permit"
        || e.patient_ids.is_empty()
        || !DATA_ACTIONS.contains(&e.action.as_str())
    {
        return;
    }
    let w = i64::from(cfg.bulk_window_mins) * 60;
    let bucket = e.occurred_at.timestamp().div_euclid(w);
    let b = windows.bulk.entry(user).or_insert_with(|| Bulk {
        bucket,
        patients: HashSet::new(),
        seqs: Vec::new(),
        threshold: None,
        fired: false,
    });
    if b.bucket != bucket {
        *b = Bulk {
            bucket,
            patients: HashSet::new(),
            seqs: Vec::new(),
            threshold: None,
            fired: false,
        };
    }
    let before = b.patients.len();
    b.patients.extend(e.patient_ids.iter().copied());
    if b.patients.len() > before && b.seqs.len() < MAX_EVIDENCE {
        b.seqs.push(e.seq);
    }
    let n = b.patients.len() as u64;
    if b.fired || n < u64::from(cfg.bulk_min_patients) {
        return;
    }
    let (threshold, own, role) = *b.threshold.get_or_insert_with(|| {
        let start = DateTime::from_timestamp(bucket * w, 0).unwrap_or(e.occurred_at);
        let (own, role) = baselines.means(user, &e.actor_roles, start);
        let factor = f64::from(cfg.bulk_factor);
        // "Far above" = more than factor × the mean; at least the minimum.
        let above = |mean: f64| (factor * mean.max(0.0)).floor() as u64 + 1;
        let t = u64::from(cfg.bulk_min_patients)
            .max(above(own))
            .max(above(role));
        (t, own, role)
    });
    if n < threshold {
        return;
    }
    b.fired = true;
    let kind = AlertKind::BulkAccess;
    let key = NewAlert::person_key(kind, user, bucket);
    out.push(
        NewAlert::about(kind, "distinct-patients", key, e.occurred_at)
            .person(Some(user))
            .figures(vec![
                n as i64,
                i64::from(cfg.bulk_window_mins),
                own.round() as i64,
                role.round() as i64,
                threshold as i64,
            ])
            .evidence(b.seqs.clone()),
    );
}

/// repeated-denial and auth-failure-spike.
fn windowed(cfg: &DetectConfig, windows: &mut Windows, e: &Event, out: &mut Vec<NewAlert>) {
    if e.outcome != "deny" {
        return;
    }
    let reason = e.deny_reason.as_deref().unwrap_or("");
    let weight = e
        .occurrences
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(1)
        .max(1);
    if reason == "no-relationship"
        && let Some(user) = e.actor_user_id
    {
        let w = i64::from(cfg.denials_window_mins) * 60;
        if let Some((count, seqs, bucket)) = windows.count(
            Subject::Denials(user),
            e.occurred_at,
            w,
            weight,
            e.seq,
            cfg.denials_threshold,
        ) {
            let kind = AlertKind::RepeatedDenial;
            let key = NewAlert::person_key(kind, user, bucket);
            out.push(
                NewAlert::about(kind, "no-relationship", key, e.occurred_at)
                    .person(Some(user))
                    .patient(e.patient_ids.first().copied())
                    .figures(vec![
                        count as i64,
                        i64::from(cfg.denials_window_mins),
                        i64::from(cfg.denials_threshold),
                    ])
                    .evidence(seqs),
            );
        }
    }
    if FAILURE_REASONS.contains(&reason) || e.action == "login-failed" {
        let w = i64::from(cfg.failures_window_mins) * 60;
        let client = e.actor_client_id.clone().or_else(|| e.client_app.clone());
        let subjects = [
            e.source_ip
                .clone()
                .map(|ip| (Subject::FailuresAddress(ip), "address")),
            client.map(|c| (Subject::FailuresClient(c), "client")),
            e.actor_user_id
                .map(|u| (Subject::FailuresPerson(u), "person")),
        ];
        for (subject, reason) in subjects.into_iter().flatten() {
            let Some((count, seqs, bucket)) = windows.count(
                subject.clone(),
                e.occurred_at,
                w,
                weight,
                e.seq,
                cfg.failures_threshold,
            ) else {
                continue;
            };
            let kind = AlertKind::AuthFailureSpike;
            let (who, source_ip, client_id, user_id) = match subject {
                Subject::FailuresAddress(ip) => (ip.clone(), Some(ip), None, None),
                Subject::FailuresClient(c) => (c.clone(), None, Some(c), None),
                Subject::FailuresPerson(u) => (u.to_string(), None, None, Some(u)),
                Subject::Denials(_) | Subject::NameSearches(_) => continue,
            };
            let key = format!("{}:{reason}:{who}:{bucket}", kind.code());
            out.push(
                NewAlert::about(kind, reason, key, e.occurred_at)
                    .person(user_id)
                    .source(source_ip, client_id)
                    .figures(vec![
                        count as i64,
                        i64::from(cfg.failures_window_mins),
                        i64::from(cfg.failures_threshold),
                    ])
                    .evidence(seqs),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn t0() -> DateTime<Utc> {
        // The start of a 10-minute (and 5-minute) window.
        DateTime::from_timestamp(1_800_000_000, 0).unwrap() // a multiple of 600 s
    }

    fn ev(seq: i64, secs: i64, user: Option<UserId>, action: &str, outcome: &str) -> Event {
        Event {
            seq,
            occurred_at: t0() + Duration::seconds(secs),
            actor_user_id: user,
            actor_client_id: None,
            actor_roles: vec!["clinician".into()],
            client_app: None,
            action: action.into(),
            resource_type: Some("Patient".into()),
            patient_ids: Vec::new(),
            outcome: outcome.into(),
            deny_reason: None,
            break_glass_grant_id: None,
            source_ip: None,
            occurrences: None,
        }
    }

    fn read(seq: i64, user: UserId, patient: PatientId) -> Event {
        let mut e = ev(seq, seq, Some(user), "read", "permit");
        e.patient_ids = vec![patient];
        e
    }

    /// No history: both means 0.
    fn flat(_: UserId, _: &[String], _: DateTime<Utc>) -> (f64, f64) {
        (0.0, 0.0)
    }

    fn kinds(alerts: &[NewAlert]) -> Vec<&'static str> {
        alerts.iter().map(|a| a.kind.code()).collect()
    }

    #[test]
    fn restricted_record_fires_outside_the_care_team_once_per_day_and_not_on_it() {
        let cfg = DetectConfig::default();
        let (nurse, member, p) = (UserId::new(), UserId::new(), PatientId::new());
        let mut facts = Facts::default();
        facts.restricted.insert(p, Confidentiality::Restricted);
        facts.care.insert((p, member));
        let events = vec![read(1, nurse, p), read(2, nurse, p), read(3, member, p)];
        let alerts = run(&cfg, &facts, &mut Windows::default(), &mut flat, &events);
        assert_eq!(kinds(&alerts), vec!["restricted-record"]);
        let a = &alerts[0];
        assert_eq!((a.user_id, a.patient_id), (Some(nurse), Some(p)));
        assert_eq!(a.evidence_seqs, vec![1, 2]);
        assert_eq!(a.figures, vec![2]);
        assert_eq!(a.reason, "restricted");
        // Near misses: a normal record; a denied read; the patient's own account.
        let mut facts = Facts::default();
        facts.restricted.insert(p, Confidentiality::VeryRestricted);
        facts.linked.insert(p, vec![(nurse, false)]);
        let mut denied = read(4, member, p);
        denied.outcome = "deny".into();
        let n = PatientId::new();
        let events = vec![read(5, nurse, p), denied, read(6, member, n)];
        assert!(run(&cfg, &facts, &mut Windows::default(), &mut flat, &events).is_empty());
    }

    #[test]
    fn workforce_patient_fires_for_a_co_workers_record_but_not_for_their_team_or_themself() {
        let cfg = DetectConfig::default();
        let (snoop, carer, colleague, p) = (
            UserId::new(),
            UserId::new(),
            UserId::new(),
            PatientId::new(),
        );
        let mut facts = Facts::default();
        facts.linked.insert(p, vec![(colleague, true)]);
        facts.care.insert((p, carer));
        let events = vec![read(1, carer, p), read(2, colleague, p), read(3, snoop, p)];
        let alerts = run(&cfg, &facts, &mut Windows::default(), &mut flat, &events);
        assert_eq!(kinds(&alerts), vec!["workforce-patient"]);
        assert_eq!(alerts[0].user_id, Some(snoop));
        // A patient linked to an account that holds only the patient role: no alert.
        facts.linked.insert(p, vec![(colleague, false)]);
        assert!(
            run(
                &cfg,
                &facts,
                &mut Windows::default(),
                &mut flat,
                &events[2..]
            )
            .is_empty()
        );
    }

    fn denial(seq: i64, secs: i64, user: UserId) -> Event {
        let mut e = ev(seq, secs, Some(user), "read", "deny");
        e.deny_reason = Some("no-relationship".into());
        e.patient_ids = vec![PatientId::new()];
        e
    }

    #[test]
    fn repeated_denials_fire_at_the_threshold_once_per_window() {
        let cfg = DetectConfig::default();
        let u = UserId::new();
        let mut w = Windows::default();
        let two = vec![denial(1, 0, u), denial(2, 60, u)];
        assert!(run(&cfg, &Facts::default(), &mut w, &mut flat, &two).is_empty());
        let more = vec![denial(3, 120, u), denial(4, 180, u)];
        let alerts = run(&cfg, &Facts::default(), &mut w, &mut flat, &more);
        assert_eq!(kinds(&alerts), vec!["repeated-denial"]);
        assert_eq!(alerts[0].evidence_seqs, vec![1, 2, 3]);
        assert_eq!(alerts[0].figures, vec![3, 10, 3]);
        // Near miss: two in one window, one in the next.
        let mut w = Windows::default();
        let spread = vec![denial(1, 0, u), denial(2, 500, u), denial(3, 700, u)];
        assert!(run(&cfg, &Facts::default(), &mut w, &mut flat, &spread).is_empty());
        // Another reason (missing scope) is not a relationship denial.
        let mut w = Windows::default();
        let mut other: Vec<Event> = (1..=5).map(|i| denial(i, i, u)).collect();
        for e in &mut other {
            e.deny_reason = Some("missing-scope".into());
        }
        assert!(
            !kinds(&run(&cfg, &Facts::default(), &mut w, &mut flat, &other))
                .contains(&"repeated-denial")
        );
    }

    fn failure(seq: i64, secs: i64, ip: &str) -> Event {
        let mut e = ev(seq, secs, None, "read", "deny");
        e.deny_reason = Some("invalid-credentials".into());
        e.source_ip = Some(ip.into());
        e
    }

    #[test]
    fn failure_spikes_fire_per_address_client_and_person_counting_aggregated_floods() {
        let cfg = DetectConfig {
            failures_threshold: 5,
            ..DetectConfig::default()
        };
        let mut w = Windows::default();
        let four: Vec<Event> = (1..=4).map(|i| failure(i, i, "10.0.0.1")).collect();
        assert!(run(&cfg, &Facts::default(), &mut w, &mut flat, &four).is_empty());
        let alerts = run(
            &cfg,
            &Facts::default(),
            &mut w,
            &mut flat,
            &[failure(5, 5, "10.0.0.1")],
        );
        assert_eq!(kinds(&alerts), vec!["auth-failure-spike"]);
        assert_eq!(alerts[0].reason, "address");
        assert_eq!(alerts[0].source_ip.as_deref(), Some("10.0.0.1"));
        // Near miss: four each from two addresses.
        let mut w = Windows::default();
        let mixed: Vec<Event> = (1..=8)
            .map(|i| failure(i, i, if i % 2 == 0 { "10.0.0.1" } else { "10.0.0.2" }))
            .collect();
        assert!(run(&cfg, &Facts::default(), &mut w, &mut flat, &mixed).is_empty());
        // One rate-limit summary standing for 40 refusals of a person through a client.
        let mut w = Windows::default();
        let u = UserId::new();
        let mut flood = ev(1, 1, Some(u), "search", "deny");
        flood.deny_reason = Some("rate-limited".into());
        flood.client_app = Some("app-1".into());
        flood.occurrences = Some(40);
        let alerts = run(&cfg, &Facts::default(), &mut w, &mut flat, &[flood]);
        let mut reasons: Vec<&str> = alerts.iter().map(|a| a.reason).collect();
        reasons.sort();
        assert_eq!(reasons, vec!["client", "person"]);
        assert!(alerts.iter().all(|a| a.figures[0] == 40));
    }

    #[test]
    fn replaying_the_same_events_into_fresh_windows_gives_the_same_keys() {
        let cfg = DetectConfig::default();
        let u = UserId::new();
        let events: Vec<Event> = (1..=3).map(|i| denial(i, i, u)).collect();
        let a = run(
            &cfg,
            &Facts::default(),
            &mut Windows::default(),
            &mut flat,
            &events,
        );
        let b = run(
            &cfg,
            &Facts::default(),
            &mut Windows::default(),
            &mut flat,
            &events,
        );
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].dedup_key, b[0].dedup_key);
    }

    #[test]
    fn bulk_access_fires_far_above_both_baselines_and_not_below_either() {
        let cfg = DetectConfig {
            bulk_min_patients: 10,
            ..DetectConfig::default()
        };
        let u = UserId::new();
        let reads: Vec<Event> = (1..=40).map(|i| read(i, u, PatientId::new())).collect();
        // Own mean 5, role mean 8: the alert needs more than 3 × 8 = 24 patients.
        let mut asked = 0;
        let mut means = |_: UserId, roles: &[String], _: DateTime<Utc>| {
            asked += 1;
            assert_eq!(roles, ["clinician".to_string()]);
            (5.0, 8.0)
        };
        let alerts = run(
            &cfg,
            &Facts::default(),
            &mut Windows::default(),
            &mut means,
            &reads,
        );
        assert_eq!(kinds(&alerts), vec!["bulk-access"]);
        assert_eq!(alerts[0].figures, vec![25, 60, 5, 8, 25]);
        assert_eq!(alerts[0].evidence_seqs.len(), 25);
        assert_eq!(asked, 1, "baselines asked once per window");
        // Near miss: the same 40 reads are within three times the role's mean of 14.
        let mut busy_role = |_: UserId, _: &[String], _: DateTime<Utc>| (5.0, 14.0);
        assert!(
            run(
                &cfg,
                &Facts::default(),
                &mut Windows::default(),
                &mut busy_role,
                &reads
            )
            .is_empty()
        );
        // Repeated reads of the same few patients are not bulk.
        let p = PatientId::new();
        let same: Vec<Event> = (1..=40).map(|i| read(i, u, p)).collect();
        assert!(
            run(
                &cfg,
                &Facts::default(),
                &mut Windows::default(),
                &mut flat,
                &same
            )
            .is_empty()
        );
    }

    #[test]
    fn same_family_name_fires_outside_the_care_team_and_not_on_it() {
        let cfg = DetectConfig::default();
        let (relative, carer, p) = (UserId::new(), UserId::new(), PatientId::new());
        let mut facts = Facts::default();
        // Both share the patient's family-name index; only the carer is on the team.
        facts.same_family.insert((p, relative));
        facts.same_family.insert((p, carer));
        facts.care.insert((p, carer));
        let events = vec![
            read(1, relative, p),
            read(2, carer, p),
            read(3, relative, p),
        ];
        let alerts = run(&cfg, &facts, &mut Windows::default(), &mut flat, &events);
        assert_eq!(kinds(&alerts), vec!["same-family-name"]);
        let a = &alerts[0];
        assert_eq!((a.user_id, a.patient_id), (Some(relative), Some(p)));
        assert_eq!(a.evidence_seqs, vec![1, 3]);
        // Near miss: another patient, whose index differs.
        let other = PatientId::new();
        assert!(
            run(
                &cfg,
                &facts,
                &mut Windows::default(),
                &mut flat,
                &[read(4, relative, other)]
            )
            .is_empty()
        );
    }

    fn search(seq: i64, secs: i64, user: UserId) -> Event {
        let mut e = ev(seq, secs, Some(user), "search", "permit");
        e.patient_ids = vec![PatientId::new()];
        e
    }

    #[test]
    fn name_search_sweep_fires_at_the_threshold_once_per_window() {
        let cfg = DetectConfig {
            name_search_threshold: 5,
            ..DetectConfig::default()
        };
        let u = UserId::new();
        let mut w = Windows::default();
        let sweep: Vec<Event> = (1..=7).map(|i| search(i, i * 10, u)).collect();
        let alerts = run(&cfg, &Facts::default(), &mut w, &mut flat, &sweep);
        assert_eq!(kinds(&alerts), vec!["name-search-sweep"]);
        assert_eq!(alerts[0].figures, vec![5, 10, 5]);
        assert_eq!(alerts[0].evidence_seqs, vec![1, 2, 3, 4, 5]);
        // Near misses: four searches in a window and four in the next; searches of
        // another resource type; reads of patients.
        let mut w = Windows::default();
        let split: Vec<Event> = (1..=8)
            .map(|i| search(i, if i <= 4 { i } else { 600 + i }, u))
            .collect();
        assert!(run(&cfg, &Facts::default(), &mut w, &mut flat, &split).is_empty());
        let mut obs: Vec<Event> = (1..=8).map(|i| search(i, i, u)).collect();
        for e in &mut obs {
            e.resource_type = Some("Observation".into());
        }
        let reads: Vec<Event> = (9..=16).map(|i| read(i, u, PatientId::new())).collect();
        let mut w = Windows::default();
        assert!(run(&cfg, &Facts::default(), &mut w, &mut flat, &obs).is_empty());
        assert!(run(&cfg, &Facts::default(), &mut w, &mut flat, &reads).is_empty());
    }

    #[test]
    fn off_hours_fires_outside_the_facilitys_hours_in_its_time_zone() {
        let cfg = DetectConfig::default(); // 07:00 to 19:00 UTC
        let (night, day, service) = (UserId::new(), UserId::new(), UserId::new());
        // t0 is 08:00 UTC: within the default hours.
        let at = |seq: i64, secs: i64, user: UserId| {
            let mut e = read(seq, user, PatientId::new());
            e.occurred_at = t0() + Duration::seconds(secs);
            e
        };
        let mut late = at(3, 12 * 3600, night); // 20:00 UTC
        let mut bot = at(4, 12 * 3600, service);
        bot.actor_roles = vec!["service".into()];
        let events = vec![at(1, 0, day), at(2, 10 * 3600, night), late.clone(), bot];
        let alerts = run(
            &cfg,
            &Facts::default(),
            &mut Windows::default(),
            &mut flat,
            &events,
        );
        assert_eq!(kinds(&alerts), vec!["off-hours"]);
        assert_eq!(alerts[0].user_id, Some(night));
        assert_eq!(alerts[0].figures, vec![1, 7, 19]);
        // The same 20:00 UTC is 15:00 in New York: a facility there with 08–18 is quiet…
        let mut facts = Facts::default();
        let ny = WorkHours {
            start: 8,
            end: 18,
            tz: chrono_tz::America::New_York,
        };
        facts.hours.insert(night, ny);
        late.seq = 5;
        assert!(
            run(
                &cfg,
                &facts,
                &mut Windows::default(),
                &mut flat,
                &[late.clone()]
            )
            .is_empty()
        );
        // …and 08:00 UTC (03:00 there) is off-hours, dated by the local day.
        let early = at(6, 0, night);
        let alerts = run(&cfg, &facts, &mut Windows::default(), &mut flat, &[early]);
        assert_eq!(kinds(&alerts), vec!["off-hours"]);
        assert_eq!(alerts[0].figures, vec![1, 8, 18]);
        assert!(
            alerts[0].dedup_key.ends_with("2027-01-15"),
            "{}",
            alerts[0].dedup_key
        );
    }

    #[test]
    fn closed_windows_are_pruned() {
        let cfg = DetectConfig::default();
        let mut w = Windows::default();
        run(
            &cfg,
            &Facts::default(),
            &mut w,
            &mut flat,
            &[denial(1, 0, UserId::new())],
        );
        assert_eq!(w.len(), 1);
        run(
            &cfg,
            &Facts::default(),
            &mut w,
            &mut flat,
            &[ev(2, 3600, None, "read", "permit")],
        );
        assert!(w.is_empty());
    }
}
