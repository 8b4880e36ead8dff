//! Break-glass: emergency access to a patient outside one's care relationship. The rules
//! live here, pure: who may ask ([`may_break_glass`]), what a request must carry
//! ([`check_request`]), how strong and recent the person's authentication must be
//! ([`judge_authentication`]), which mode applies ([`BreakGlassConfig::mode_for`]) and
//! what a grant permits (the decision point in `policy/mod.rs`: a grant is its own
//! [`super::Basis::BreakGlass`], standing in for the care-team relationship of the
//! roles that may break glass, with that role's view).
//!
//! The `[break_glass]` configuration section is owned here; `config` aggregates it.

use super::Role;
use crate::domain::FacilityId;
use serde::Deserialize;

/// The break-glass operations of the FHIR API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// `POST /fhir/Patient/{id}/$break-glass`: ask for a grant.
    Request,
    /// `GET /fhir/Patient/{id}/$break-glass`: the caller's latest grant for the patient
    /// (what a requester polls in approval mode).
    Status,
    /// `POST /fhir/Patient/{id}/$break-glass-end`: end one's own grant early.
    End,
    /// `GET /fhir/Patient/$break-glass-lookup?identifier=…`: identification only, by an
    /// exact identifier, across the organisation.
    Lookup,
}

impl Operation {
    /// Every operation, in the order the route table registers them and the
    /// CapabilityStatement lists them.
    pub const ALL: [Operation; 4] = [
        Operation::Lookup,
        Operation::Request,
        Operation::Status,
        Operation::End,
    ];

    /// The HTTP method and path of the operation's route.
    pub fn route(self) -> (&'static str, &'static str) {
        match self {
            Operation::Request => ("POST", "/fhir/Patient/{id}/$break-glass"),
            Operation::Status => ("GET", "/fhir/Patient/{id}/$break-glass"),
            Operation::End => ("POST", "/fhir/Patient/{id}/$break-glass-end"),
            Operation::Lookup => ("GET", "/fhir/Patient/$break-glass-lookup"),
        }
    }

    /// The operation's name (what follows the `$`): the request and its status poll are
    /// one operation, answered by POST (ask) and GET (poll).
    pub fn name(self) -> &'static str {
        match self {
            Operation::Request | Operation::Status => "break-glass",
            Operation::End => "break-glass-end",
            Operation::Lookup => "break-glass-lookup",
        }
    }

    /// What the operation does and takes, for the CapabilityStatement.
    pub fn documentation(self) -> &'static str {
        match self {
            Operation::Request => {
                "POST on an instance: ask for emergency access to one patient outside one's care relationship. Parameters: reason (valueCode or valueCoding.code from break_glass.reasons), justification (valueString, 20 to 1000 characters), minutes (valueInteger, up to break_glass.max_minutes). Needs a recent multi-factor sign-in (else 401 with an RFC 9470 challenge). 201 (emergency mode, active at once) or 202 (approval mode, pending), with the grant as Parameters."
            }
            Operation::Status => {
                "GET on an instance: the caller's latest break-glass grant for the patient (status pending, active, denied, revoked, expired or withdrawn; expires; minutesLeft; decisionReason) as Parameters."
            }
            Operation::End => {
                "POST on an instance, no body: end one's own active grant early, or withdraw one's own request still waiting for approval. Answers the grant as Parameters."
            }
            Operation::Lookup => {
                "GET on the type with identifier=[urn:custodian:mrn|]<MRN>: identification only (id, MRN, name, birth date) across the organisation, before a break-glass request; audited as break-glass-lookup."
            }
        }
    }
}

/// How a request becomes a grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Active at once; a retrospective review by a privacy officer is mandatory.
    Emergency,
    /// Pending until an administrator approves it in the console (approver ≠ requester);
    /// the clock starts at approval.
    Approval,
}

impl Mode {
    pub fn code(self) -> &'static str {
        match self {
            Mode::Emergency => "emergency",
            Mode::Approval => "approval",
        }
    }
}

/// `[break_glass]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakGlassConfig {
    /// The mode everywhere, except the facilities listed in `approval_facilities`.
    pub mode: Mode,
    /// Facilities (ids) whose patients need approval whatever `mode` says.
    pub approval_facilities: Vec<FacilityId>,
    /// The coded reasons a request may give.
    pub reasons: Vec<String>,
    pub default_minutes: u32,
    pub max_minutes: u32,
    /// Most grants one user holds at once (active or waiting for approval).
    pub max_active_grants: u32,
    /// The person's sign-in (`auth_time`) must be at most this old.
    pub auth_max_age_secs: u64,
    /// `acr` values that show multi-factor authentication (an `amr` containing `mfa`
    /// does too).
    pub acr_values: Vec<String>,
    /// A privacy officer's review is due this many days after a grant's request.
    pub review_days: u32,
}

/// The reasons of the default configuration.
pub const DEFAULT_REASONS: &[&str] = &[
    "emergency-treatment",
    "patient-unable-to-consent",
    "urgent-consult",
    "continuity-of-care",
];

pub const MFA_ACR: &str = "http://schemas.openid.net/pape/policies/2007/06/multi-factor";

impl Default for BreakGlassConfig {
    fn default() -> Self {
        Self {
            mode: Mode::Emergency,
            approval_facilities: Vec::new(),
            reasons: DEFAULT_REASONS.iter().map(|r| r.to_string()).collect(),
            default_minutes: 60,
            max_minutes: 240,
            max_active_grants: 3,
            auth_max_age_secs: 900,
            acr_values: vec![MFA_ACR.to_string()],
            review_days: 7,
        }
    }
}

/// A configuration problem: (setting, problem).
pub type Invalid = (&'static str, &'static str);

impl BreakGlassConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.reasons.is_empty() {
            return Err(("break_glass.reasons", "must name at least one reason code"));
        }
        if !self.reasons.iter().all(|r| is_code(r)) {
            return Err((
                "break_glass.reasons",
                "entries must be codes of lowercase letters, digits and '-' (at most 64)",
            ));
        }
        if !(1..=1440).contains(&self.max_minutes) {
            return Err(("break_glass.max_minutes", "must be 1 to 1440"));
        }
        if !(1..=self.max_minutes).contains(&self.default_minutes) {
            return Err((
                "break_glass.default_minutes",
                "must be 1 to break_glass.max_minutes",
            ));
        }
        if self.max_active_grants == 0 {
            return Err(("break_glass.max_active_grants", "must be at least 1"));
        }
        if self.auth_max_age_secs == 0 {
            return Err(("break_glass.auth_max_age_secs", "must be at least 1"));
        }
        let printable = |v: &String| {
            !v.is_empty() && v.len() <= 200 && v.bytes().all(|b| b.is_ascii_graphic() && b != b'"')
        };
        if self.acr_values.is_empty() || !self.acr_values.iter().all(printable) {
            return Err((
                "break_glass.acr_values",
                "must list at least one acr value (printable, no spaces or quotes)",
            ));
        }
        if self.review_days == 0 {
            return Err(("break_glass.review_days", "must be at least 1"));
        }
        Ok(())
    }

    /// The mode for a patient of `facility`.
    pub fn mode_for(&self, facility: FacilityId) -> Mode {
        if self.approval_facilities.contains(&facility) {
            Mode::Approval
        } else {
            self.mode
        }
    }
}

fn is_code(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// May a person holding `roles` break glass? Clinicians only: they are the role whose
/// access rests on a care relationship that an emergency can lack.
pub fn may_break_glass(roles: &[Role]) -> bool {
    roles.contains(&Role::Clinician)
}

/// May a console user with `roles` review grant held by `holder`? Privacy officers, and
/// never their own grant.
pub fn may_review(
    roles: &[Role],
    reviewer: crate::domain::UserId,
    holder: crate::domain::UserId,
) -> bool {
    roles.contains(&Role::PrivacyOfficer) && reviewer != holder
}

/// May a console user with `roles` end someone's grant early? Administrators and
/// privacy officers (the requester ends their own through the API).
pub fn may_revoke(roles: &[Role]) -> bool {
    roles.contains(&Role::Admin) || roles.contains(&Role::PrivacyOfficer)
}

/// The verdicts of a review.
pub const VERDICTS: [&str; 3] = ["appropriate", "inappropriate", "needs-follow-up"];

/// Shortest justification (characters, after trimming).
pub const JUSTIFICATION_MIN: usize = 20;
pub const JUSTIFICATION_MAX: usize = 1000;

/// A request as the caller sent it.
pub struct Request<'a> {
    pub reason: Option<&'a str>,
    pub justification: Option<&'a str>,
    pub minutes: Option<i64>,
}

/// A request that passed [`check_request`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidRequest {
    pub reason: String,
    pub justification: String,
    pub minutes: u32,
}

/// Checks a request against the configuration. Errors are fixed messages naming the
/// parameter (never echoing its value).
pub fn check_request(
    config: &BreakGlassConfig,
    r: &Request<'_>,
) -> Result<ValidRequest, &'static str> {
    let reason = r
        .reason
        .ok_or("The parameter 'reason' is required (a code from the configured list).")?;
    if !config.reasons.iter().any(|known| known == reason) {
        return Err("The parameter 'reason' must be one of the configured reason codes.");
    }
    let justification = r
        .justification
        .ok_or("The parameter 'justification' is required (at least 20 characters).")?
        .trim();
    let n = justification.chars().count();
    if n < JUSTIFICATION_MIN {
        return Err("The parameter 'justification' must be at least 20 characters long.");
    }
    if n > JUSTIFICATION_MAX {
        return Err("The parameter 'justification' must be at most 1000 characters long.");
    }
    if justification
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err("The parameter 'justification' must not contain control characters.");
    }
    let minutes = match r.minutes {
        None => config.default_minutes,
        Some(m) if m >= 1 && m <= i64::from(config.max_minutes) => {
            u32::try_from(m).map_err(|_| "The parameter 'minutes' is out of range.")?
        }
        Some(_) => {
            return Err(
                "The parameter 'minutes' must be at least 1 and at most the configured maximum (break_glass.max_minutes).",
            );
        }
    };
    Ok(ValidRequest {
        reason: reason.to_string(),
        justification: justification.to_string(),
        minutes,
    })
}

/// What the token says about the person's sign-in.
pub struct Authentication<'a> {
    pub auth_time: Option<i64>,
    pub acr: Option<&'a str>,
    pub amr: &'a [String],
}

/// Recent, multi-factor authentication, or the RFC 9470 challenge to ask for it.
pub fn judge_authentication(
    config: &BreakGlassConfig,
    auth: &Authentication<'_>,
    now_secs: i64,
) -> Result<(), String> {
    judge_authentication_for(config, auth, now_secs, StepUpFor::BreakGlass)
}

/// What a step-up is asked for (the challenge's fixed description names it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepUpFor {
    BreakGlass,
    /// A Bulk Data export (`policy::export`): the same strength and age as break-glass.
    Export,
}

impl StepUpFor {
    fn description(self) -> &'static str {
        match self {
            StepUpFor::BreakGlass => "Break-glass needs a recent multi-factor sign-in",
            StepUpFor::Export => "Bulk export needs a recent multi-factor sign-in",
        }
    }
}

/// [`judge_authentication`] for any operation that needs a step-up: one check, one
/// configuration (`break_glass.auth_max_age_secs`, `break_glass.acr_values`).
pub fn judge_authentication_for(
    config: &BreakGlassConfig,
    auth: &Authentication<'_>,
    now_secs: i64,
    purpose: StepUpFor,
) -> Result<(), String> {
    let max_age = i64::try_from(config.auth_max_age_secs).unwrap_or(i64::MAX);
    let recent = auth
        .auth_time
        .is_some_and(|t| t <= now_secs + 60 && now_secs.saturating_sub(t) <= max_age);
    let multi_factor = auth
        .acr
        .is_some_and(|acr| config.acr_values.iter().any(|v| v == acr))
        || auth.amr.iter().any(|m| m == "mfa");
    if recent && multi_factor {
        Ok(())
    } else {
        Err(challenge_for(config, purpose))
    }
}

/// `WWW-Authenticate` of RFC 9470 §3 (configuration values only).
pub fn challenge(config: &BreakGlassConfig) -> String {
    challenge_for(config, StepUpFor::BreakGlass)
}

fn challenge_for(config: &BreakGlassConfig, purpose: StepUpFor) -> String {
    format!(
        "Bearer error=\"insufficient_user_authentication\", error_description=\"{}\", max_age={}, acr_values=\"{}\"",
        purpose.description(),
        config.auth_max_age_secs,
        config.acr_values.join(" ")
    )
}

/// The one-line hint a refused clinician is given (403), naming the operation.
pub const AVAILABLE_MESSAGE: &str = "Access denied: you have no care relationship with this patient, or the record is restricted. Break-glass is available to you: POST /fhir/Patient/{id}/$break-glass with a Parameters body (reason, justification, minutes) to request emergency access; it is audited and reviewed.";

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(reason: &'a str, justification: &'a str, minutes: Option<i64>) -> Request<'a> {
        Request {
            reason: Some(reason),
            justification: Some(justification),
            minutes,
        }
    }

    const WHY: &str = "Unconscious in the ED, no treating clinician reachable";

    #[test]
    fn requests_are_checked_against_the_configuration() {
        let c = BreakGlassConfig::default();
        let ok = check_request(&c, &req("emergency-treatment", WHY, None)).unwrap();
        assert_eq!(ok.minutes, 60);
        assert!(check_request(&c, &req("curiosity", WHY, None)).is_err());
        assert!(check_request(&c, &req("emergency-treatment", "too short", None)).is_err());
        assert!(
            check_request(
                &c,
                &req("emergency-treatment", "   short but padded     ", None)
            )
            .is_err()
        );
        assert!(check_request(&c, &req("emergency-treatment", WHY, Some(241))).is_err());
        assert!(check_request(&c, &req("emergency-treatment", WHY, Some(0))).is_err());
        assert_eq!(
            check_request(&c, &req("emergency-treatment", WHY, Some(240)))
                .unwrap()
                .minutes,
            240
        );
        let err = check_request(&c, &req("<script>", WHY, None)).unwrap_err();
        assert!(!err.contains("<script>"));
    }

    #[test]
    fn strong_recent_authentication_is_required() {
        let c = BreakGlassConfig::default();
        let now = 1_800_000_000;
        let mfa = vec!["pwd".to_string(), "mfa".to_string()];
        let pwd = vec!["pwd".to_string()];
        let ok = |t, acr, amr: &[String]| {
            judge_authentication(
                &c,
                &Authentication {
                    auth_time: t,
                    acr,
                    amr,
                },
                now,
            )
        };
        assert!(ok(Some(now - 60), None, &mfa).is_ok());
        assert!(ok(Some(now - 60), Some(MFA_ACR), &pwd).is_ok());
        assert!(ok(Some(now - 60), None, &pwd).is_err(), "single factor");
        assert!(ok(Some(now - 901), None, &mfa).is_err(), "stale");
        assert!(ok(None, None, &mfa).is_err(), "no auth_time");
        let challenge = ok(None, None, &pwd).unwrap_err();
        assert!(challenge.starts_with("Bearer error=\"insufficient_user_authentication\""));
        assert!(challenge.contains("max_age=900"));
        assert!(challenge.contains(&format!("acr_values=\"{MFA_ACR}\"")));
    }

    #[test]
    fn privacy_officers_review_grants_but_not_their_own() {
        let (a, b) = (crate::domain::UserId::new(), crate::domain::UserId::new());
        for role in Role::ALL {
            assert_eq!(
                may_review(&[role], a, b),
                role == Role::PrivacyOfficer,
                "{role:?}"
            );
            assert_eq!(
                may_revoke(&[role]),
                matches!(role, Role::Admin | Role::PrivacyOfficer),
                "{role:?}"
            );
        }
        assert!(!may_review(&[Role::PrivacyOfficer, Role::Clinician], a, a));
    }

    #[test]
    fn clinicians_may_break_glass_and_nobody_else() {
        for role in Role::ALL {
            assert_eq!(
                may_break_glass(&[role]),
                role == Role::Clinician,
                "{role:?}"
            );
        }
    }

    #[test]
    fn approval_facilities_need_approval_whatever_the_global_mode() {
        let (north, south) = (FacilityId::new(), FacilityId::new());
        let c = BreakGlassConfig {
            approval_facilities: vec![north],
            ..BreakGlassConfig::default()
        };
        assert_eq!(c.mode_for(north), Mode::Approval);
        assert_eq!(c.mode_for(south), Mode::Emergency);
        let c = BreakGlassConfig {
            mode: Mode::Approval,
            ..BreakGlassConfig::default()
        };
        assert_eq!(c.mode_for(south), Mode::Approval);
    }

    #[test]
    fn the_default_configuration_is_valid_and_bad_ones_are_named() {
        assert!(BreakGlassConfig::default().validate().is_ok());
        let c = BreakGlassConfig {
            default_minutes: 500,
            ..BreakGlassConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().0, "break_glass.default_minutes");
        let c = BreakGlassConfig {
            reasons: vec!["Bad Code".into()],
            ..BreakGlassConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().0, "break_glass.reasons");
    }
}
