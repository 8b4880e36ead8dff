//! The alert list (`GET /console/alerts`) and one alert's page (`GET /console/alerts/{id}`,
//! where webhook payloads link): alerts with their severity, detector, person,
//! time, plain-words explanation and evidence links, filtered by status, kind and
//! severity, newest first with keyset paging. Who sees it, and who sees a patient's MRN
//! beside an alert, is decided by [`policy::cases`] and [`policy::review`]; every view is
//! recorded like the other review pages (purpose of use `HCOMPL`, naming the patients
//! identified). Also the shared pieces of the case and suppression pages: the refusal
//! (recorded), the alert row.

use super::review::{pairs, reviewer, short};
use super::time;
use crate::audit::search::display_names;
use crate::audit::{AuditAction, DenyReason, Outcome, ResourceType as Kind, What};
use crate::console::gate::{Console, ConsolePage};
use crate::db::alerts::{Alert, AlertKind, Severity};
use crate::db::cases::{self, AlertFilter, AlertStatus};
use crate::domain::{PatientId, UserId};
use crate::error::AppError;
use crate::policy::cases::{AlertWork, Refusal, may};
use crate::policy::review::{Review, may_review};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, web};
use askama::Template;
use askama_web::WebTemplate;
use diesel::PgConnection;
use std::collections::HashMap;
use uuid::Uuid;

/// Alerts per page.
pub const ALERTS_PAGE_SIZE: i64 = 50;

/// Records a refusal of alert work as this user (purpose compliance) and answers it with
/// the rule's fixed message: 409 for a case that cannot move so, 403 otherwise.
pub(super) async fn refuse(page: &Console, what: What, why: Refusal) -> AppError {
    let reason = match why {
        Refusal::RoleMissing => DenyReason::MissingRole,
        Refusal::AboutSelf => DenyReason::SeparationOfDuties,
        Refusal::NotOwner | Refusal::OwnerNotPrivacyOfficer | Refusal::Transition => {
            DenyReason::Policy
        }
    };
    if let Err(e) = reviewer(page).deny(what, [], reason).await {
        return e;
    }
    let status = match why {
        Refusal::Transition => StatusCode::CONFLICT,
        _ => StatusCode::FORBIDDEN,
    };
    AppError::client(status, why.message())
}

/// Refuses (recorded) unless the policy lets this user do `work`.
pub(super) async fn admit(page: &Console, work: AlertWork, what: What) -> Result<(), AppError> {
    match may(&page.me.user.roles, work) {
        Ok(()) => Ok(()),
        Err(why) => Err(refuse(page, what, why).await),
    }
}

/// Records the error outcome of a failed piece of alert work and hands the error on.
pub(super) async fn failed(page: &Console, what: What, e: AppError) -> AppError {
    let event = reviewer(page).event(what, [], Outcome::Error).build();
    match reviewer(page).record(event).await {
        Ok(()) => e,
        Err(audit) => audit,
    }
}

/// One alert as the alert list and a case page show it.
pub struct AlertRow {
    pub id: Uuid,
    pub time: String,
    pub kind: String,
    pub title: &'static str,
    pub severity: String,
    pub explanation: String,
    /// The person's display name (else a short id), and the id (for links).
    pub person: String,
    pub person_id: String,
    /// The patient's MRN (privacy officers only) or short id, and the id.
    pub patient: String,
    pub patient_id: String,
    /// Who when not a person: the source address or client id.
    pub source: String,
    pub evidence: Vec<i64>,
    /// The case it belongs to and its status, if any.
    pub case_id: String,
    pub case_status: String,
}

/// Display names of people, by id.
pub(super) type Names = HashMap<UserId, String>;
/// MRNs of the patients a privacy officer sees, by id.
pub(super) type Mrns = HashMap<PatientId, String>;

/// What the alert rows need besides the alerts: display names and (for privacy officers)
/// MRNs, loaded in one database call. Returns the patients identified.
pub(super) fn people(
    conn: &mut PgConnection,
    kr: &crate::crypto::Keyring,
    alerts: &[&Alert],
    identify: bool,
) -> Result<(Names, Mrns), AppError> {
    let mut users: Vec<UserId> = alerts.iter().filter_map(|a| a.user_id).collect();
    users.sort();
    users.dedup();
    let names = display_names(conn, &users)?;
    let mut mrns = HashMap::new();
    if identify {
        for p in alerts.iter().filter_map(|a| a.patient_id) {
            if mrns.contains_key(&p) {
                continue;
            }
            if let Some(found) = crate::db::patients::patient_by_id(conn, kr, p)? {
                mrns.insert(p, found.mrn.expose().clone());
            }
        }
    }
    Ok((names, mrns))
}

pub(super) fn row(
    a: Alert,
    case: Option<(Uuid, String)>,
    names: &HashMap<UserId, String>,
    mrns: &HashMap<PatientId, String>,
) -> AlertRow {
    let explanation = a.explanation();
    let title = AlertKind::from_code(&a.kind).map_or("Alert", |k| k.title());
    let mut evidence = a.evidence_seqs;
    evidence.truncate(10);
    let (case_id, case_status) = case.map(|(c, s)| (c.to_string(), s)).unwrap_or_default();
    AlertRow {
        id: a.id,
        time: time(a.created_at),
        title,
        explanation,
        severity: a.severity,
        person: a
            .user_id
            .map(|u| {
                names
                    .get(&u)
                    .cloned()
                    .unwrap_or_else(|| format!("user {}", short(&u.as_uuid())))
            })
            .unwrap_or_default(),
        person_id: a.user_id.map(|u| u.to_string()).unwrap_or_default(),
        patient: a
            .patient_id
            .map(|p| {
                mrns.get(&p)
                    .map(|m| format!("MRN {m}"))
                    .unwrap_or_else(|| format!("patient {}", short(&p.as_uuid())))
            })
            .unwrap_or_default(),
        patient_id: a.patient_id.map(|p| p.to_string()).unwrap_or_default(),
        source: a.source_ip.or(a.client_id).unwrap_or_default(),
        kind: a.kind,
        evidence,
        case_id,
        case_status,
    }
}

/// A choice of a filter's select box.
pub struct Choice {
    pub code: &'static str,
    pub label: &'static str,
    pub selected: bool,
}

#[derive(Template, WebTemplate)]
#[template(path = "console/alerts.html")]
pub struct AlertsPage {
    chrome: super::Chrome,
    statuses: Vec<Choice>,
    kinds: Vec<Choice>,
    severities: Vec<Choice>,
    identify: bool,
    work: bool,
    alerts: Vec<AlertRow>,
    older: String,
    newest: String,
}

/// The raw filter of the query string.
#[derive(Default)]
struct Raw {
    status: String,
    kind: String,
    severity: String,
    before: String,
}

fn bad(message: &'static str) -> AppError {
    AppError::bad_request(message)
}

impl Raw {
    fn of(query: &str) -> Result<Raw, AppError> {
        let mut raw = Raw::default();
        for (k, v) in pairs(query) {
            let slot = match k.as_str() {
                "status" => &mut raw.status,
                "kind" => &mut raw.kind,
                "severity" => &mut raw.severity,
                "before" => &mut raw.before,
                _ => {
                    return Err(bad(
                        "Invalid alert filter: use status, kind, severity and before only.",
                    ));
                }
            };
            *slot = v.trim().to_string();
        }
        Ok(raw)
    }

    fn parse(&self) -> Result<(AlertFilter, Option<Uuid>), AppError> {
        let pick =
            |raw: &str, message: &'static str, find: &dyn Fn(&str) -> Option<&'static str>| {
                if raw.is_empty() {
                    Ok(None)
                } else {
                    find(raw).map(Some).ok_or_else(|| bad(message))
                }
            };
        let status = if self.status.is_empty() {
            None
        } else {
            Some(
                AlertStatus::from_code(&self.status)
                    .ok_or_else(|| bad("Invalid filter 'status': use new, in-case or closed."))?,
            )
        };
        let kind = pick(
            &self.kind,
            "Invalid filter 'kind': choose one of the listed detectors.",
            &|k| AlertKind::from_code(k).map(AlertKind::code),
        )?;
        let severity = pick(
            &self.severity,
            "Invalid filter 'severity': use low, medium or high.",
            &|s| SEVERITIES.iter().map(|v| v.code()).find(|c| *c == s),
        )?;
        let before = if self.before.is_empty() {
            None
        } else {
            Some(
                Uuid::parse_str(&self.before)
                    .map_err(|_| bad("Invalid paging: use before=<alert id>."))?,
            )
        };
        Ok((
            AlertFilter {
                status,
                kind,
                severity,
            },
            before,
        ))
    }

    fn link(&self, before: Option<Uuid>) -> String {
        let mut s = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("status", &self.status),
            ("kind", &self.kind),
            ("severity", &self.severity),
        ] {
            if !v.is_empty() {
                s.append_pair(k, v);
            }
        }
        if let Some(b) = before {
            s.append_pair("before", &b.to_string());
        }
        let q = s.finish();
        if q.is_empty() {
            "/console/alerts".into()
        } else {
            format!("/console/alerts?{q}")
        }
    }
}

const SEVERITIES: [Severity; 3] = [Severity::High, Severity::Medium, Severity::Low];

fn list_what() -> What {
    What::new(AuditAction::Search).on(Kind::Alert)
}

/// GET /console/alerts?status=&kind=&severity=&before=: the alert list.
pub async fn alerts_page(req: HttpRequest, page: ConsolePage) -> Result<AlertsPage, AppError> {
    admit(&page, AlertWork::ViewAlerts, list_what()).await?;
    let raw = Raw::of(req.query_string())?;
    let (filter, before) = raw.parse()?;
    let identify = may_review(&page.me.user.roles, Review::IdentifyPatients).is_ok();
    let work = may(&page.me.user.roles, AlertWork::WorkCases).is_ok();
    let kr = page.state.keyring.clone();
    let found = page
        .state
        .db
        .run(move |c| {
            let list = cases::alert_page(c, &filter, before, ALERTS_PAGE_SIZE + 1)?;
            let refs: Vec<&Alert> = list.iter().map(|(a, _)| a).collect();
            let (names, mrns) = people(c, &kr, &refs, identify)?;
            Ok((list, names, mrns))
        })
        .await;
    let (mut list, names, mrns) = match found {
        Ok(v) => v,
        Err(e) => return Err(failed(&page, list_what(), e).await),
    };
    // The view names the patients whose MRN it shows.
    reviewer(&page)
        .permit(list_what(), mrns.keys().copied().collect::<Vec<_>>())
        .await?;
    let more = list.len() as i64 > ALERTS_PAGE_SIZE;
    list.truncate(ALERTS_PAGE_SIZE as usize);
    let older = match (more, list.last()) {
        (true, Some((a, _))) => raw.link(Some(a.id)),
        _ => String::new(),
    };
    let newest = if before.is_some() {
        raw.link(None)
    } else {
        String::new()
    };
    let alerts = list
        .into_iter()
        .map(|(a, case)| row(a, case, &names, &mrns))
        .collect();
    Ok(AlertsPage {
        chrome: page.0.chrome,
        statuses: AlertStatus::ALL
            .iter()
            .map(|s| Choice {
                code: s.code(),
                label: s.code(),
                selected: s.code() == raw.status,
            })
            .collect(),
        kinds: AlertKind::ALL
            .iter()
            .map(|k| Choice {
                code: k.code(),
                label: k.title(),
                selected: k.code() == raw.kind,
            })
            .collect(),
        severities: SEVERITIES
            .iter()
            .map(|s| Choice {
                code: s.code(),
                label: s.code(),
                selected: s.code() == raw.severity,
            })
            .collect(),
        identify,
        work,
        alerts,
        older,
        newest,
    })
}

#[derive(Template, WebTemplate)]
#[template(path = "console/alert.html")]
pub struct AlertPage {
    chrome: super::Chrome,
    identify: bool,
    work: bool,
    alert: AlertRow,
    /// Every figure and evidence event (the list shows the first ten events).
    figures: Vec<i64>,
    evidence: Vec<i64>,
    grant_id: String,
}

fn no_such_alert() -> AppError {
    AppError::client(StatusCode::NOT_FOUND, "The alert was not found.")
}

fn alert_what(id: Option<Uuid>) -> What {
    let w = What::new(AuditAction::Read).on(Kind::Alert);
    match id {
        Some(id) => w.id(id),
        None => w,
    }
}

/// GET /console/alerts/{id}: one alert — explanation, figures, every evidence link, the
/// person, the patient (MRN for privacy officers only), the source, the grant and the case
/// it is in. Admitted and recorded like the list (a read of the alert, naming the patient
/// whose MRN it shows).
pub async fn alert_page(page: ConsolePage, path: web::Path<String>) -> Result<AlertPage, AppError> {
    let id = Uuid::parse_str(&path).ok();
    let what = alert_what(id);
    admit(&page, AlertWork::ViewAlerts, what).await?;
    let Some(id) = id else {
        return Err(failed(&page, what, no_such_alert()).await);
    };
    let identify = may_review(&page.me.user.roles, Review::IdentifyPatients).is_ok();
    let work = may(&page.me.user.roles, AlertWork::WorkCases).is_ok();
    let kr = page.state.keyring.clone();
    let found = page
        .state
        .db
        .run(move |c| {
            let Some((alert, case)) = cases::alert_with_case(c, id)? else {
                return Ok(None);
            };
            let (names, mrns) = people(c, &kr, &[&alert], identify)?;
            Ok(Some((alert, case, names, mrns)))
        })
        .await;
    let (alert, case, names, mrns) = match found {
        Ok(Some(v)) => v,
        Ok(None) => return Err(failed(&page, what, no_such_alert()).await),
        Err(e) => return Err(failed(&page, what, e).await),
    };
    reviewer(&page)
        .permit(what, mrns.keys().copied().collect::<Vec<_>>())
        .await?;
    let figures = alert.figures.clone();
    let evidence = alert.evidence_seqs.clone();
    let grant_id = alert.grant_id.map(|g| g.to_string()).unwrap_or_default();
    Ok(AlertPage {
        chrome: page.0.chrome,
        identify,
        work,
        alert: row(alert, case, &names, &mrns),
        figures,
        evidence,
        grant_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_and_unknown_values_are_refused_without_echo() {
        let raw = Raw::of("status=new&kind=bulk-access&severity=high").unwrap();
        let (f, before) = raw.parse().unwrap();
        assert_eq!(f.status, Some(AlertStatus::New));
        assert_eq!(f.kind, Some("bulk-access"));
        assert_eq!(f.severity, Some("high"));
        assert_eq!(before, None);
        for q in [
            "status=<script>",
            "kind=nope",
            "severity=urgent",
            "before=12",
            "other=1",
        ] {
            let err = Raw::of(q).and_then(|r| r.parse().map(|_| ())).unwrap_err();
            let text = format!("{err:?}");
            assert!(
                !text.contains("<script>") && !text.contains("nope"),
                "{text}"
            );
        }
    }

    #[test]
    fn links_keep_the_filters() {
        let raw = Raw::of("status=new&kind=bulk-access").unwrap();
        assert_eq!(
            raw.link(None),
            "/console/alerts?status=new&kind=bulk-access"
        );
    }
}
