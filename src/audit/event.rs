//! The typed audit event. Every field is a UUID, a coded value or a bounded, sanitised
//! token: there is no free-text field, so PHI (names, MRNs, query strings, bodies) has
//! nowhere to go. [`AuditEvent::to_record`] flattens an event into the stored form
//! ([`EventRecord`]), whose [`EventRecord::canonical`] bytes the hash chain covers.

pub use crate::domain::RequestId;
use crate::domain::{PatientId, UserId};
use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::IpAddr;
use uuid::Uuid;

/// A value that is not one of the allowed codes or tokens.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {0}")]
pub struct InvalidValue(pub &'static str);

macro_rules! coded_enum {
    ($(#[$meta:meta])* $name:ident { $( $variant:ident = $code:literal, )* }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name { $( $variant, )* }

        impl $name {
            pub const ALL: &'static [$name] = &[ $( $name::$variant, )* ];

            /// The stable code stored in the audit table.
            pub fn code(self) -> &'static str {
                match self { $( $name::$variant => $code, )* }
            }

            pub fn from_code(code: &str) -> Option<Self> {
                match code { $( $code => Some($name::$variant), )* _ => None }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.code())
            }
        }
    };
}

coded_enum! {
    /// What happened.
    AuditAction {
        Read = "read",
        Search = "search",
        Create = "create",
        Update = "update",
        Delete = "delete",
        Export = "export",
        Login = "login",
        LoginFailed = "login-failed",
        StepUp = "step-up",
        Logout = "logout",
        SessionRevoked = "session-revoked",
        ClientRevoked = "client-revoked",
        PermissionChange = "permission-change",
        CareRelationshipChange = "care-relationship-change",
        BreakGlassRequest = "break-glass-request",
        BreakGlassStart = "break-glass-start",
        BreakGlassEnd = "break-glass-end",
        // A requester withdrew their own waiting break-glass request.
        BreakGlassWithdraw = "break-glass-withdraw",
        // An approver's decision on a break-glass request (approval mode), and a privacy
        // officer's review verdict on a grant.
        BreakGlassDecision = "break-glass-decision",
        BreakGlassReview = "break-glass-review",
        // The confidentiality (N/R/V) of a patient record was set.
        ConfidentialityChange = "confidentiality-change",
        // The identification-only lookup of a patient by identifier before a break-glass.
        BreakGlassLookup = "break-glass-lookup",
        KeyRotation = "key-rotation",
        AuditExport = "audit-export",
        AuditVerify = "audit-verify",
        EmergencyLogin = "emergency-login",
        EmergencyAccountChange = "emergency-account-change",
        // The approval queue (separation of duties): a change kept for a second
        // administrator, and that administrator's decision.
        ChangeRequested = "change-requested",
        ChangeApproved = "change-approved",
        ChangeDenied = "change-denied",
        // An export pseudonym turned back into a patient (privacy office, step-up and a
        // sealed justification required).
        Reidentify = "reidentify",
    }
}

/// How urgently a reviewer must look at an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Normal,
    /// Bypasses a normal safeguard (emergency access): reviewed promptly, and logged as a
    /// warning when recorded so that log-based alerting sees it too.
    High,
}

impl AuditAction {
    pub fn severity(self) -> Severity {
        match self {
            AuditAction::EmergencyLogin
            | AuditAction::BreakGlassRequest
            | AuditAction::BreakGlassStart
            | AuditAction::BreakGlassEnd
            | AuditAction::BreakGlassWithdraw
            | AuditAction::BreakGlassDecision
            | AuditAction::BreakGlassReview
            | AuditAction::Reidentify => Severity::High,
            _ => Severity::Normal,
        }
    }
}

coded_enum! {
    /// How the actor authenticated.
    AuthMethod {
        None = "none",
        Bearer = "bearer",
        ClientCredentials = "client-credentials",
        Session = "session",
        SessionMfa = "session-mfa",
        Cli = "cli",
        // An emergency account's local password plus TOTP (no identity provider).
        EmergencyPassword = "emergency-password",
        // The service itself, on its own schedule (a break-glass grant's expiry).
        System = "system",
    }
}

coded_enum! {
    /// The kind of resource acted on.
    ResourceType {
        Patient = "Patient",
        Observation = "Observation",
        DocumentReference = "DocumentReference",
        Claim = "Claim",
        User = "User",
        RoleAssignment = "RoleAssignment",
        CareRelationship = "CareRelationship",
        Client = "Client",
        Session = "Session",
        BreakGlassGrant = "BreakGlassGrant",
        Key = "Key",
        AuditLog = "AuditLog",
        EmergencyAccount = "EmergencyAccount",
        PendingChange = "PendingChange",
        // A detector's or break-glass alert, a privacy case grouping alerts, and a
        // suppression of alerts about one person and one patient (`db::cases`).
        Alert = "Alert",
        PrivacyCase = "PrivacyCase",
        AlertSuppression = "AlertSuppression",
        WebhookEndpoint = "WebhookEndpoint",
        WebhookDelivery = "WebhookDelivery",
        // A Bulk Data export job (`export`): its events carry the job id.
        ExportJob = "ExportJob",
    }
}

coded_enum! {
    /// Why access was requested (HL7 v3 PurposeOfUse codes).
    PurposeOfUse {
        Treatment = "TREAT",
        EmergencyTreatment = "ETREAT",
        Payment = "HPAYMT",
        Operations = "HOPERAT",
        SystemAdministration = "HSYSADMIN",
        PatientRequest = "PATRQT",
        PublicHealth = "PUBHLTH",
        Research = "HRESCH",
        Legal = "HLEGAL",
        Compliance = "HCOMPL",
        // Access under a break-glass grant: set by the access pipeline, never by a header.
        BreakTheGlass = "BTG",
    }
}

coded_enum! {
    /// Why access was denied.
    DenyReason {
        NotAuthenticated = "not-authenticated",
        InvalidCredentials = "invalid-credentials",
        MissingScope = "missing-scope",
        MissingRole = "missing-role",
        NoRelationship = "no-relationship",
        StepUpRequired = "step-up-required",
        BreakGlassExpired = "break-glass-expired",
        RateLimited = "rate-limited",
        Revoked = "revoked",
        Policy = "policy",
        // The actor withdrew a change kept for its step-up code (console Cancel).
        Cancelled = "cancelled",
        // Nobody changes their own access or approves their own request.
        SeparationOfDuties = "separation-of-duties",
        // A write or search on a field outside the role's view.
        FieldNotInView = "field-not-in-view",
    }
}

coded_enum! {
    /// Why a permitted access was allowed (the decision point's basis).
    AccessBasis {
        CareTeam = "care-team",
        Facility = "facility",
        OwnRecord = "own-record",
        BreakGlass = "break-glass",
    }
}

impl From<crate::policy::Basis> for AccessBasis {
    fn from(b: crate::policy::Basis) -> Self {
        use crate::policy::Basis as P;
        match b {
            P::CareTeam => AccessBasis::CareTeam,
            P::Facility => AccessBasis::Facility,
            P::OwnRecord => AccessBasis::OwnRecord,
            P::BreakGlass(_) => AccessBasis::BreakGlass,
        }
    }
}

/// The result of the audited action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Permit,
    Deny(DenyReason),
    Error,
}

impl Outcome {
    pub fn code(self) -> &'static str {
        match self {
            Outcome::Permit => "permit",
            Outcome::Deny(_) => "deny",
            Outcome::Error => "error",
        }
    }

    pub fn reason(self) -> Option<DenyReason> {
        match self {
            Outcome::Deny(r) => Some(r),
            _ => None,
        }
    }
}

/// A short token: 1..=`max` printable ASCII characters without spaces (ids from our
/// configuration or the identity provider, never user input).
fn token(kind: &'static str, max: usize, s: &str) -> Result<String, InvalidValue> {
    let ok = !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_graphic());
    ok.then(|| s.to_string()).ok_or(InvalidValue(kind))
}

/// An OAuth client id (token `azp` / `client_id`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientId(String);

impl ClientId {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        token("client id", 128, s).map(Self)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A role code such as `clinician` (lowercase letters, digits, `_` and `-`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RoleCode(String);

impl RoleCode {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        let ok = !s.is_empty()
            && s.len() <= 32
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        ok.then(|| Self(s.to_string()))
            .ok_or(InvalidValue("role code"))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

coded_enum! {
    /// The kind of client a request's `User-Agent` header names — a class, never the
    /// header itself: the header is free text the caller controls (a name or an SSN typed
    /// into it must not reach the audit trail), so only this coarse class is stored.
    UserAgent {
        Browser = "browser",
        CommandLine = "command-line",
        Library = "library",
        Other = "other",
    }
}

impl UserAgent {
    /// Command-line HTTP tools, by product token.
    const COMMAND_LINE: &'static [&'static str] =
        &["curl/", "wget/", "httpie/", "xh/", "powershell/"];
    /// HTTP libraries and SDKs, by product token.
    const LIBRARIES: &'static [&'static str] = &[
        "python-requests/",
        "python-urllib/",
        "python-httpx/",
        "aiohttp/",
        "reqwest/",
        "hyper/",
        "go-http-client/",
        "okhttp/",
        "java/",
        "java-http-client/",
        "apache-httpclient/",
        "axios/",
        "node-fetch/",
        "undici",
        "node",
        "got ",
        "libwww-perl/",
        "ruby",
        "faraday ",
        "dart:io",
        "dart/",
        "guzzlehttp/",
        "restsharp/",
        "microsoft.net.http",
    ];

    /// The class of a raw `User-Agent` value (`None`: no agent given). The value is only
    /// looked at, never kept.
    pub fn classify(raw: &str) -> Option<Self> {
        let ua = raw.trim().to_ascii_lowercase();
        if ua.is_empty() {
            return None;
        }
        let starts = |prefixes: &[&str]| prefixes.iter().any(|p| ua.starts_with(p));
        Some(if starts(Self::COMMAND_LINE) {
            UserAgent::CommandLine
        } else if starts(Self::LIBRARIES) {
            UserAgent::Library
        } else if ua.starts_with("mozilla/") || ua.starts_with("opera/") {
            UserAgent::Browser
        } else {
            UserAgent::Other
        })
    }

    pub fn as_str(&self) -> &'static str {
        self.code()
    }
}

/// Who acted. Filled from the authenticated principal once authentication exists;
/// [`Actor::anonymous`] for unauthenticated callers (failed logins, denials).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor {
    /// Our internal user id (people).
    pub user_id: Option<UserId>,
    /// The client id for services (client-credentials).
    pub client_id: Option<ClientId>,
    pub roles: Vec<RoleCode>,
    pub auth_method: AuthMethod,
}

impl Actor {
    pub fn anonymous() -> Self {
        Self {
            user_id: None,
            client_id: None,
            roles: Vec::new(),
            auth_method: AuthMethod::None,
        }
    }

    pub fn user(user_id: UserId, roles: Vec<RoleCode>, auth_method: AuthMethod) -> Self {
        Self {
            user_id: Some(user_id),
            client_id: None,
            roles,
            auth_method,
        }
    }

    pub fn service(client_id: ClientId, roles: Vec<RoleCode>) -> Self {
        Self {
            user_id: None,
            client_id: Some(client_id),
            roles,
            auth_method: AuthMethod::ClientCredentials,
        }
    }

    /// The service itself acting on its own schedule (no person, no request): the
    /// break-glass expiry sweeper.
    pub fn system() -> Self {
        Self {
            auth_method: AuthMethod::System,
            ..Self::anonymous()
        }
    }

    /// An operator running a `custodian` command on the server.
    pub fn cli() -> Self {
        Self {
            auth_method: AuthMethod::Cli,
            ..Self::anonymous()
        }
    }
}

/// One audit event. Build it with [`crate::audit::AuditContext::event`] in handlers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEvent {
    pub event_id: Uuid,
    /// UTC, truncated to microseconds (what PostgreSQL stores).
    pub occurred_at: DateTime<Utc>,
    pub actor: Actor,
    /// The client application the request came through (token `azp` / `client_id`).
    pub client_app: Option<ClientId>,
    pub action: AuditAction,
    pub resource_type: Option<ResourceType>,
    pub resource_id: Option<Uuid>,
    /// Internal ids of every patient touched (every patient a search returned).
    pub patient_ids: Vec<PatientId>,
    pub outcome: Outcome,
    pub purpose_of_use: Option<PurposeOfUse>,
    pub break_glass_grant_id: Option<Uuid>,
    pub source_ip: Option<IpAddr>,
    pub user_agent: Option<UserAgent>,
    pub request_id: Option<RequestId>,
    /// How many refused requests this one event stands for, when several were aggregated
    /// into it (rate-limited floods, see [`crate::audit::flood`]); `None` for one request.
    pub occurrences: Option<u32>,
    /// Why the access was allowed (permitted accesses decided on a relationship).
    pub basis: Option<AccessBasis>,
}

impl AuditEvent {
    /// A new event happening now with a fresh id.
    pub fn new(actor: Actor, action: AuditAction, outcome: Outcome) -> Self {
        Self {
            event_id: Uuid::new_v4(),
            occurred_at: Utc::now().trunc_subsecs(6),
            actor,
            client_app: None,
            action,
            resource_type: None,
            resource_id: None,
            patient_ids: Vec::new(),
            outcome,
            purpose_of_use: None,
            break_glass_grant_id: None,
            source_ip: None,
            user_agent: None,
            request_id: None,
            occurrences: None,
            basis: None,
        }
    }

    /// The stored form of this event at position `seq` of the chain.
    pub fn to_record(&self, seq: i64) -> EventRecord {
        let mut roles: Vec<String> = self
            .actor
            .roles
            .iter()
            .map(|r| r.as_str().to_string())
            .collect();
        roles.sort();
        roles.dedup();
        EventRecord {
            seq,
            event_id: self.event_id,
            occurred_at: self.occurred_at.trunc_subsecs(6),
            actor_user_id: self.actor.user_id,
            actor_client_id: self.actor.client_id.as_ref().map(|c| c.0.clone()),
            actor_roles: roles,
            auth_method: self.actor.auth_method.code().to_string(),
            client_app: self.client_app.as_ref().map(|c| c.0.clone()),
            action: self.action.code().to_string(),
            resource_type: self.resource_type.map(|r| r.code().to_string()),
            resource_id: self.resource_id,
            patient_ids: self.patient_ids.clone(),
            outcome: self.outcome.code().to_string(),
            deny_reason: self.outcome.reason().map(|r| r.code().to_string()),
            purpose_of_use: self.purpose_of_use.map(|p| p.code().to_string()),
            break_glass_grant_id: self.break_glass_grant_id,
            source_ip: self.source_ip.map(|ip| ip.to_string()),
            user_agent: self.user_agent.map(|u| u.code().to_string()),
            request_id: self.request_id.as_ref().map(|r| r.as_str().to_string()),
            occurrences: self
                .occurrences
                .map(|n| i32::try_from(n).unwrap_or(i32::MAX)),
            basis: self.basis.map(|b| b.code().to_string()),
        }
    }
}

/// The stored (flat) form of an event: one row of `audit_events` without its hash, and
/// one line of an export. Verification hashes exactly these values.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventRecord {
    pub seq: i64,
    pub event_id: Uuid,
    pub occurred_at: DateTime<Utc>,
    pub actor_user_id: Option<UserId>,
    pub actor_client_id: Option<String>,
    pub actor_roles: Vec<String>,
    pub auth_method: String,
    pub client_app: Option<String>,
    pub action: String,
    pub resource_type: Option<String>,
    pub resource_id: Option<Uuid>,
    pub patient_ids: Vec<PatientId>,
    pub outcome: String,
    pub deny_reason: Option<String>,
    pub purpose_of_use: Option<String>,
    pub break_glass_grant_id: Option<Uuid>,
    pub source_ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    /// Aggregated events only (absent from the exports of every other event, so exports
    /// written before the field existed still read and verify).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occurrences: Option<i32>,
    /// Added after `occurrences`, absent like it when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basis: Option<String>,
}

/// Length-prefixed, fixed-order encoding: no two different records share an encoding.
struct Canon(Vec<u8>);

impl Canon {
    fn bytes(&mut self, b: &[u8]) {
        // Fields are bounded far below 4 GiB; saturate rather than wrap regardless.
        let len = u32::try_from(b.len()).unwrap_or(u32::MAX);
        self.0.extend_from_slice(&len.to_be_bytes());
        self.0.extend_from_slice(b);
    }
    fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn uuid(&mut self, u: &Uuid) {
        self.0.extend_from_slice(u.as_bytes());
    }
    fn opt<T: ?Sized>(&mut self, v: Option<&T>, f: impl FnOnce(&mut Self, &T)) {
        match v {
            None => self.0.push(0),
            Some(v) => {
                self.0.push(1);
                f(self, v);
            }
        }
    }
    fn list<T>(&mut self, items: &[T], f: impl Fn(&mut Self, &T)) {
        let len = u32::try_from(items.len()).unwrap_or(u32::MAX);
        self.0.extend_from_slice(&len.to_be_bytes());
        for item in items {
            f(self, item);
        }
    }
}

/// Domain separation and format version of the canonical encoding.
pub const CANONICAL_PREFIX: &[u8] = b"custodian.audit.event.v1\0";

impl EventRecord {
    /// The canonical bytes of this record (sequence number included).
    pub fn canonical(&self) -> Vec<u8> {
        let mut c = Canon(Vec::with_capacity(256));
        c.0.extend_from_slice(CANONICAL_PREFIX);
        c.i64(self.seq);
        c.uuid(&self.event_id);
        c.i64(self.occurred_at.timestamp_micros());
        c.opt(self.actor_user_id.as_ref(), |c, u| c.uuid(&u.as_uuid()));
        c.opt(self.actor_client_id.as_deref(), Canon::str);
        c.list(&self.actor_roles, |c, r| c.str(r));
        c.str(&self.auth_method);
        c.opt(self.client_app.as_deref(), Canon::str);
        c.str(&self.action);
        c.opt(self.resource_type.as_deref(), Canon::str);
        c.opt(self.resource_id.as_ref(), Canon::uuid);
        c.list(&self.patient_ids, |c, p| c.uuid(&p.as_uuid()));
        c.str(&self.outcome);
        c.opt(self.deny_reason.as_deref(), Canon::str);
        c.opt(self.purpose_of_use.as_deref(), Canon::str);
        c.opt(self.break_glass_grant_id.as_ref(), Canon::uuid);
        c.opt(self.source_ip.as_deref(), Canon::str);
        c.opt(self.user_agent.as_deref(), Canon::str);
        c.opt(self.request_id.as_deref(), Canon::str);
        // Added after v1 chains existed: encoded only when present, so every event without
        // it keeps its v1 bytes (and every existing chain verifies). Unambiguous: the
        // fields above are self-delimiting, so a trailing tag can only be this field.
        if let Some(n) = self.occurrences {
            c.0.push(b'o');
            c.i64(i64::from(n));
        }
        // Likewise, after it, with its own tag.
        if let Some(b) = &self.basis {
            c.0.push(b'b');
            c.str(b);
        }
        c.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AuditEvent {
        let mut e = AuditEvent::new(
            Actor::user(
                UserId(Uuid::from_u128(1)),
                vec![RoleCode::parse("clinician").unwrap()],
                AuthMethod::Bearer,
            ),
            AuditAction::Read,
            Outcome::Permit,
        );
        e.event_id = Uuid::from_u128(2);
        e.occurred_at = DateTime::from_timestamp_micros(1_800_000_000_123_456).unwrap();
        e.resource_type = Some(ResourceType::Patient);
        e.resource_id = Some(Uuid::from_u128(3));
        e.patient_ids = vec![PatientId(Uuid::from_u128(3))];
        e.purpose_of_use = Some(PurposeOfUse::Treatment);
        e
    }

    #[test]
    fn canonical_encoding_is_stable() {
        let r = sample().to_record(7);
        assert_eq!(r.canonical(), r.clone().canonical());
        let digest = {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(r.canonical()))
        };
        // Changing the encoding breaks every existing chain: this value must not move.
        assert_eq!(
            digest, "cd83bef0794a16033d0a0f95aca9c19640a1ec9c6d8775dc927d55f6910b4e29",
            "{digest}"
        );
    }

    #[test]
    fn every_field_changes_the_encoding() {
        let base = sample().to_record(7);
        let mut variants = Vec::new();
        let mut v = base.clone();
        v.seq = 8;
        variants.push(v);
        let mut v = base.clone();
        v.basis = Some("care-team".into());
        variants.push(v);
        let mut v = base.clone();
        v.basis = Some("facility".into());
        variants.push(v);
        let mut v = base.clone();
        v.occurred_at += chrono::Duration::microseconds(1);
        variants.push(v);
        let mut v = base.clone();
        v.actor_roles.push("admin".into());
        variants.push(v);
        let mut v = base.clone();
        v.patient_ids.push(PatientId(Uuid::from_u128(9)));
        variants.push(v);
        let mut v = base.clone();
        v.outcome = "deny".into();
        variants.push(v);
        let mut v = base.clone();
        v.user_agent = Some(String::new());
        variants.push(v);
        let mut v = base.clone();
        v.request_id = Some("x".into());
        variants.push(v);
        let mut v = base.clone();
        v.occurrences = Some(2);
        let mut w = v.clone();
        w.occurrences = Some(3);
        variants.push(v);
        variants.push(w);
        for v in variants {
            assert_ne!(v.canonical(), base.canonical(), "{v:?}");
        }
    }

    #[test]
    fn adjacent_fields_cannot_be_shifted() {
        // "ab" + "c" and "a" + "bc" must not encode the same.
        let mut a = sample().to_record(1);
        a.actor_client_id = Some("ab".into());
        a.client_app = Some("c".into());
        let mut b = a.clone();
        b.actor_client_id = Some("a".into());
        b.client_app = Some("bc".into());
        assert_ne!(a.canonical(), b.canonical());
        // An absent value differs from an empty one.
        let mut c = a.clone();
        c.client_app = None;
        let mut d = a.clone();
        d.client_app = Some(String::new());
        assert_ne!(c.canonical(), d.canonical());
    }

    #[test]
    fn user_agent_is_stored_as_a_class_never_as_text() {
        let cases = [
            ("curl/8.5.0", Some(UserAgent::CommandLine)),
            ("Wget/1.21", Some(UserAgent::CommandLine)),
            ("python-requests/2.31", Some(UserAgent::Library)),
            ("reqwest/0.12", Some(UserAgent::Library)),
            ("okhttp/4.12.0", Some(UserAgent::Library)),
            (
                "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/131.0",
                Some(UserAgent::Browser),
            ),
            ("Jane Doe 123-45-6789", Some(UserAgent::Other)),
            ("  \t", None),
            ("", None),
        ];
        for (raw, class) in cases {
            assert_eq!(UserAgent::classify(raw), class, "{raw}");
        }
        // Whatever the caller typed, the stored value is one of four codes.
        let mut e = sample();
        e.user_agent = UserAgent::classify("curl/8 Jane Doe 123-45-6789\r\n");
        let stored = e.to_record(1).user_agent.unwrap();
        assert_eq!(stored, "command-line");
        for code in UserAgent::ALL {
            assert!(UserAgent::from_code(code.code()).is_some());
        }
    }

    #[test]
    fn tokens_refuse_free_text() {
        assert!(ClientId::parse("ehr-app").is_ok());
        assert!(ClientId::parse("Jane Doe").is_err());
        assert!(ClientId::parse(&"a".repeat(129)).is_err());
        assert!(RoleCode::parse("clinician").is_ok());
        assert!(RoleCode::parse("Clinician").is_err());
        assert!(RequestId::parse("a b").is_none());
    }

    #[test]
    fn codes_round_trip() {
        for a in AuditAction::ALL {
            assert_eq!(AuditAction::from_code(a.code()), Some(*a));
        }
        for p in PurposeOfUse::ALL {
            assert_eq!(PurposeOfUse::from_code(p.code()), Some(*p));
        }
        assert_eq!(
            Outcome::Deny(DenyReason::NoRelationship).reason(),
            Some(DenyReason::NoRelationship)
        );
    }

    #[test]
    fn roles_are_sorted_and_deduplicated() {
        let mut e = sample();
        e.actor.roles = ["billing", "admin", "billing"]
            .iter()
            .map(|r| RoleCode::parse(r).unwrap())
            .collect();
        assert_eq!(e.to_record(1).actor_roles, vec!["admin", "billing"]);
    }
}

// The audit codes of the shared vocabulary: total functions from the policy's enums, so
// no policy value can lack an audit code (no string round-trip, no runtime error).

impl From<crate::policy::ResourceType> for ResourceType {
    fn from(r: crate::policy::ResourceType) -> Self {
        use crate::policy::ResourceType as P;
        match r {
            P::Patient => ResourceType::Patient,
            P::Observation => ResourceType::Observation,
            P::DocumentReference => ResourceType::DocumentReference,
            P::Claim => ResourceType::Claim,
        }
    }
}

impl From<crate::policy::DenyReason> for DenyReason {
    fn from(r: crate::policy::DenyReason) -> Self {
        use crate::policy::DenyReason as P;
        match r {
            P::ScopeMissing => DenyReason::MissingScope,
            P::RoleMissing => DenyReason::MissingRole,
            // (A principal who may break glass is told so; the trail records the same
            // reason as for anyone else without a relationship the record admits.)
            P::NoRelationship | P::BreakGlassAvailable => DenyReason::NoRelationship,
        }
    }
}

impl From<crate::policy::Interaction> for AuditAction {
    fn from(i: crate::policy::Interaction) -> Self {
        use crate::policy::Interaction as P;
        match i {
            P::Read => AuditAction::Read,
            P::Search => AuditAction::Search,
            P::Create => AuditAction::Create,
            P::Update => AuditAction::Update,
            P::Delete => AuditAction::Delete,
        }
    }
}

impl From<crate::policy::Role> for RoleCode {
    /// Every role's code is a valid role code (lowercase letters and `_`), by the test
    /// below; the conversion needs no validation at run time.
    fn from(r: crate::policy::Role) -> Self {
        RoleCode(r.as_str().to_string())
    }
}

#[cfg(test)]
mod vocabulary_tests {
    use super::*;

    #[test]
    fn policy_values_map_to_the_audit_codes_of_the_same_name() {
        for r in crate::policy::ResourceType::ALL {
            assert_eq!(ResourceType::from(r).code(), r.as_str());
        }
        for r in crate::policy::Role::ALL {
            assert_eq!(RoleCode::parse(r.as_str()), Ok(RoleCode::from(r)));
        }
    }
}
