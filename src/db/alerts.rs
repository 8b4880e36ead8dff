//! Alerts: what a privacy officer must look at. One row per alert, ids, codes and
//! numbers only; the plain-words explanation is built from them when shown
//! ([`explain`]), so no free text (and no PHI) is ever stored.
//!
//! Any module raises an alert the same way: build a [`NewAlert`] (a kind from
//! [`AlertKind`], a reason code, the ids it is about, a `dedup_key` naming what makes it
//! one alert) and call [`raise_all`] inside the transaction that found the pattern. A
//! second raise with the same `dedup_key` inserts nothing. A new kind is one variant
//! below (its code, default severity and explanation); the table checks only the shape
//! of the code, so no migration is needed.

use crate::domain::{GrantId, PatientId, UserId};
use crate::error::AppError;
use crate::schema::alerts as a;
use chrono::{DateTime, Utc};
use diesel::pg::PgConnection;
use diesel::prelude::*;
use uuid::Uuid;

/// How urgently an alert needs a look.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Low,
    Medium,
    High,
}

impl Severity {
    pub fn code(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
        }
    }
}

macro_rules! alert_kinds {
    ($( $variant:ident = $code:literal, $severity:ident, $title:literal; )*) => {
        /// Every kind of alert (`alerts.kind`): the detectors' and the break-glass module's.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum AlertKind { $( $variant, )* }

        impl AlertKind {
            pub const ALL: &'static [AlertKind] = &[ $( AlertKind::$variant, )* ];

            /// The stable code stored in `alerts.kind` (and used as a metrics label).
            pub fn code(self) -> &'static str {
                match self { $( AlertKind::$variant => $code, )* }
            }

            pub fn from_code(code: &str) -> Option<Self> {
                match code { $( $code => Some(AlertKind::$variant), )* _ => None }
            }

            /// The severity an alert of this kind gets unless its raiser says otherwise.
            pub fn severity(self) -> Severity {
                match self { $( AlertKind::$variant => Severity::$severity, )* }
            }

            /// A short title for lists.
            pub fn title(self) -> &'static str {
                match self { $( AlertKind::$variant => $title, )* }
            }
        }
    };
}

alert_kinds! {
    BreakGlassRequest = "break-glass-request", High, "Break-glass requested";
    BreakGlassApproval = "break-glass-approval", High, "Break-glass approved";
    BreakGlassFirstUse = "break-glass-first-use", High, "Break-glass grant used";
    BreakGlassReviewOverdue = "break-glass-review-overdue", Medium, "Break-glass review overdue";
    RestrictedRecord = "restricted-record", High, "Restricted record outside the care team";
    RepeatedDenial = "repeated-denial", Medium, "Repeatedly refused without a relationship";
    WorkforcePatient = "workforce-patient", High, "Co-worker's record";
    AuthFailureSpike = "auth-failure-spike", Medium, "Authentication or authorisation failures";
    BulkAccess = "bulk-access", High, "Unusually many patients";
    SameFamilyName = "same-family-name", High, "Patient with the person's family name";
    NameSearchSweep = "name-search-sweep", Medium, "Many patient searches";
    OffHours = "off-hours", Low, "Access outside working hours";
    Reidentification = "reidentification", High, "Export pseudonym re-identified";
}

/// An alert to raise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewAlert {
    pub kind: AlertKind,
    pub severity: Severity,
    /// Which rule of the kind fired (a code [`explain`] knows), e.g. `address`.
    pub reason: &'static str,
    pub user_id: Option<UserId>,
    pub patient_id: Option<PatientId>,
    pub grant_id: Option<GrantId>,
    pub source_ip: Option<String>,
    pub client_id: Option<String>,
    /// The numbers the explanation quotes (counts, thresholds, minutes), in the order
    /// [`explain`] reads them.
    pub figures: Vec<i64>,
    /// Audit sequence numbers of the events that show the pattern (at most
    /// [`MAX_EVIDENCE`]).
    pub evidence_seqs: Vec<i64>,
    /// What makes this one alert: a re-raise with the same key is ignored.
    pub dedup_key: String,
    pub created_at: DateTime<Utc>,
}

impl NewAlert {
    /// An alert of `kind` at the kind's default severity, about nobody yet: the ids,
    /// figures and evidence are added with the methods below (so a raiser names only
    /// what its alert is about).
    pub fn about(
        kind: AlertKind,
        reason: &'static str,
        dedup_key: String,
        created_at: DateTime<Utc>,
    ) -> Self {
        Self {
            kind,
            severity: kind.severity(),
            reason,
            user_id: None,
            patient_id: None,
            grant_id: None,
            source_ip: None,
            client_id: None,
            figures: Vec::new(),
            evidence_seqs: Vec::new(),
            dedup_key,
            created_at,
        }
    }

    /// The dedup key of a person's alert of `kind` in one window (an hour bucket, a day,
    /// a patient and day): one alert per person, kind and window.
    pub fn person_key(kind: AlertKind, user: UserId, window: impl std::fmt::Display) -> String {
        format!("{}:{user}:{window}", kind.code())
    }

    pub fn person(mut self, user: Option<UserId>) -> Self {
        self.user_id = user;
        self
    }

    pub fn patient(mut self, patient: Option<PatientId>) -> Self {
        self.patient_id = patient;
        self
    }

    pub fn grant(mut self, grant: Option<GrantId>) -> Self {
        self.grant_id = grant;
        self
    }

    /// The source of a failure spike: an address or a client.
    pub fn source(mut self, ip: Option<String>, client: Option<String>) -> Self {
        self.source_ip = ip;
        self.client_id = client;
        self
    }

    pub fn figures(mut self, figures: Vec<i64>) -> Self {
        self.figures = figures;
        self
    }

    pub fn evidence(mut self, seqs: Vec<i64>) -> Self {
        self.evidence_seqs = seqs;
        self
    }
}

/// Most evidence sequence numbers kept on one alert (the table's limit).
pub const MAX_EVIDENCE: usize = 50;

/// Inserts the alerts not raised before (by `dedup_key`); returns the kinds of those
/// inserted, in order.
pub fn raise_all(conn: &mut PgConnection, new: &[NewAlert]) -> Result<Vec<AlertKind>, AppError> {
    let mut inserted = Vec::new();
    // An alert a privacy officer has explained away (a guardian, say) is not raised.
    let keys: Vec<_> = new
        .iter()
        .map(|n| (n.user_id, n.patient_id, n.kind.code(), n.created_at))
        .collect();
    let hidden = crate::db::suppressions::suppressed(conn, &keys)?;
    let new: Vec<&NewAlert> = new
        .iter()
        .zip(hidden)
        .filter_map(|(n, hidden)| (!hidden).then_some(n))
        .collect();
    // Bounded chunks keep one statement's parameters far below PostgreSQL's limit.
    for chunk in new.chunks(500) {
        let rows: Vec<_> = chunk
            .iter()
            .map(|n| {
                let mut evidence = n.evidence_seqs.clone();
                evidence.truncate(MAX_EVIDENCE);
                (
                    a::id.eq(Uuid::new_v4()),
                    a::kind.eq(n.kind.code()),
                    a::severity.eq(n.severity.code()),
                    a::reason.eq(n.reason),
                    a::user_id.eq(n.user_id),
                    a::patient_id.eq(n.patient_id),
                    a::grant_id.eq(n.grant_id),
                    a::source_ip.eq(n.source_ip.clone()),
                    a::client_id.eq(n.client_id.clone()),
                    a::figures.eq(n.figures.clone()),
                    a::evidence_seqs.eq(evidence),
                    a::dedup_key.eq(Some(n.dedup_key.clone())),
                    a::created_at.eq(n.created_at),
                )
            })
            .collect();
        let rows: Vec<(Uuid, String, Option<String>)> = diesel::insert_into(a::table)
            .values(rows)
            .on_conflict_do_nothing()
            .returning((a::id, a::kind, a::dedup_key))
            .get_results(conn)?;
        inserted.extend(rows.iter().filter_map(|(_, k, _)| AlertKind::from_code(k)));
        // The outbox: each new alert's webhook message commits with it, or neither does.
        let messages: Vec<_> = rows
            .iter()
            .filter_map(|(id, _, key)| {
                let n = chunk.iter().find(|n| Some(&n.dedup_key) == key.as_ref())?;
                Some(super::webhooks::NewMessage::alert(*id, n))
            })
            .collect();
        super::webhooks::enqueue(conn, &messages)?;
    }
    Ok(inserted)
}

/// One stored alert.
#[derive(Clone, Debug, Queryable, Selectable)]
#[diesel(table_name = a, check_for_backend(diesel::pg::Pg))]
pub struct Alert {
    pub id: Uuid,
    pub kind: String,
    pub severity: String,
    pub reason: String,
    pub grant_id: Option<GrantId>,
    pub user_id: Option<UserId>,
    pub patient_id: Option<PatientId>,
    pub source_ip: Option<String>,
    pub client_id: Option<String>,
    pub figures: Vec<i64>,
    pub evidence_seqs: Vec<i64>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
}

impl Alert {
    /// The plain-words explanation.
    pub fn explanation(&self) -> String {
        match AlertKind::from_code(&self.kind) {
            Some(kind) => explain(kind, &self.reason, &self.figures),
            None => "An alert of a kind this version does not know.".to_string(),
        }
    }
}

/// The newest alerts (at most `limit`).
pub fn recent(conn: &mut PgConnection, limit: i64) -> Result<Vec<Alert>, AppError> {
    Ok(a::table
        .order((a::created_at.desc(), a::id))
        .limit(limit)
        .select(Alert::as_select())
        .load(conn)?)
}

/// How many alerts of each kind exist (for the dashboard), by kind code.
pub fn counts_by_kind(conn: &mut PgConnection) -> Result<Vec<(String, i64)>, AppError> {
    Ok(a::table
        .group_by(a::kind)
        .select((a::kind, diesel::dsl::count_star()))
        .order(a::kind)
        .load(conn)?)
}

/// The explanation of an alert in plain words, from its kind, reason code and figures
/// (never from stored text). Missing figures read as 0.
pub fn explain(kind: AlertKind, reason: &str, figures: &[i64]) -> String {
    let f = |i: usize| figures.get(i).copied().unwrap_or(0);
    match kind {
        AlertKind::BreakGlassRequest => {
            "A person asked for break-glass access to a patient's record.".into()
        }
        AlertKind::BreakGlassApproval => "An administrator approved a break-glass request.".into(),
        AlertKind::BreakGlassFirstUse => "A break-glass grant was used for the first time.".into(),
        AlertKind::BreakGlassReviewOverdue => format!(
            "A break-glass grant that was used has had no privacy review {} day(s) after its review fell due.",
            f(0)
        ),
        AlertKind::RestrictedRecord => format!(
            "A person who is not on the patient's care team was given access to a record of confidentiality {} ({} access(es) that day in this alert's evidence).",
            if reason == "very-restricted" {
                "V (very restricted)"
            } else {
                "R (restricted)"
            },
            f(0)
        ),
        AlertKind::RepeatedDenial => format!(
            "A person was refused {} time(s) within {} minute(s) for having no care relationship with the patient (threshold {}).",
            f(0),
            f(1),
            f(2)
        ),
        AlertKind::WorkforcePatient => format!(
            "A person who is not on the patient's care team accessed the record of a patient who is also a member of the workforce ({} access(es) that day in this alert's evidence).",
            f(0)
        ),
        AlertKind::BulkAccess => format!(
            "A person accessed {} distinct patients within {} minute(s); their own mean is {} per active window and their role's {} (alert at {} or more).",
            f(0),
            f(1),
            f(2),
            f(3),
            f(4)
        ),
        AlertKind::SameFamilyName => format!(
            "A person who is not on the patient's care team accessed the record of a patient whose family name is the same as theirs (compared as keyed hashes, never as names; {} access(es) that day in this alert's evidence).",
            f(0)
        ),
        AlertKind::NameSearchSweep => format!(
            "A person ran {} patient search(es) within {} minute(s) (threshold {}); the trail records that a search ran, not what was searched for.",
            f(0),
            f(1),
            f(2)
        ),
        AlertKind::OffHours => format!(
            "A person accessed patient data {} time(s) on one day outside their facility's working hours ({:02}:00 to {:02}:00 local time).",
            f(0),
            f(1),
            f(2)
        ),
        AlertKind::Reidentification => {
            "A person holding the re-identification role turned a de-identified export's pseudonym back into a patient (the justification is with the re-identification record).".into()
        }
        AlertKind::AuthFailureSpike => format!(
            "{} authentication or authorisation failure(s) (401/403/429) from one {} within {} minute(s) (threshold {}).",
            f(0),
            match reason {
                "address" => "source address",
                "client" => "client application",
                _ => "person",
            },
            f(1),
            f(2)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_have_the_tables_shape() {
        for k in AlertKind::ALL {
            assert_eq!(AlertKind::from_code(k.code()), Some(*k));
            let c = k.code();
            assert!(c.len() <= 63 && c.starts_with(|ch: char| ch.is_ascii_lowercase()));
            assert!(
                c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            );
        }
    }

    #[test]
    fn explanations_quote_only_the_figures() {
        let s = explain(AlertKind::AuthFailureSpike, "address", &[25, 5, 20]);
        assert!(s.starts_with("25 authentication"), "{s}");
        assert!(
            s.contains("source address") && s.contains("threshold 20"),
            "{s}"
        );
        // Missing figures never panic.
        for k in AlertKind::ALL {
            assert!(!explain(*k, "", &[]).is_empty());
        }
    }
}
