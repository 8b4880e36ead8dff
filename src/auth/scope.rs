//! OAuth scopes of an access token, parsed into what they allow.
//!
//! Understood forms:
//! - SMART App Launch v2 resource scopes: `<context>/<Resource|*>.<cruds>` where the
//!   permission letters are a non-empty subset of `c r u d s` in that order
//!   (`user/Patient.rs`, `user/Observation.cruds`, `patient/*.rs`, `system/Claim.r`).
//! - SMART v1 resource scopes: `.read` (= `rs`), `.write` (= `cud`), `.*` (= `cruds`).
//! - The short names of the hardening guides, as documented aliases:
//!
//!   | alias          | means                                                            |
//!   |----------------|------------------------------------------------------------------|
//!   | `patient.read` | `user/Patient.rs`                                                |
//!   | `patient.write`| `user/Patient.cud`                                               |
//!   | `billing.read` | `user/Claim.rs` + `user/Patient.rs` (billing needs demographics; *which* Patient fields a billing user sees is the policy's view, not the scope's) |
//!   | `claims.write` | `user/Claim.cu`                                                  |
//!   | `admin`        | the admin API (no clinical resource access)                      |
//!   | `audit.read`   | the audit API (no clinical resource access)                      |
//!
//! Anything else is ignored: unknown contexts or resource types, malformed permission
//! strings, out-of-order or repeated letters, and v2 scopes with a `?` query filter (we
//! cannot enforce the filter here, so honouring the scope would *widen* access). An
//! ignored scope never grants anything; parsing can only narrow.
//!
//! Scopes state what the *client application* may do; the policy layer intersects them
//! with the person's roles and care relationships.

pub use crate::policy::{Context, Interaction, ResourceType};

bitflags::bitflags! {
    /// A set of interactions (`c r u d s`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Interactions: u8 {
        const CREATE = 1;
        const READ = 2;
        const UPDATE = 4;
        const DELETE = 8;
        const SEARCH = 16;
    }
}

impl Interactions {
    fn of(i: Interaction) -> Interactions {
        match i {
            Interaction::Create => Interactions::CREATE,
            Interaction::Read => Interactions::READ,
            Interaction::Update => Interactions::UPDATE,
            Interaction::Delete => Interactions::DELETE,
            Interaction::Search => Interactions::SEARCH,
        }
    }

    /// SMART v2 permissions: a non-empty subset of `cruds`, letters in that order, each
    /// at most once. v1 `read`/`write`/`*` are accepted too.
    fn parse(text: &str) -> Option<Interactions> {
        match text {
            "read" => return Some(Interactions::READ | Interactions::SEARCH),
            "write" => {
                return Some(Interactions::CREATE | Interactions::UPDATE | Interactions::DELETE);
            }
            "*" => return Some(Interactions::all()),
            "" => return None,
            _ => {}
        }
        const ORDER: [(char, Interactions); 5] = [
            ('c', Interactions::CREATE),
            ('r', Interactions::READ),
            ('u', Interactions::UPDATE),
            ('d', Interactions::DELETE),
            ('s', Interactions::SEARCH),
        ];
        let mut out = Interactions::empty();
        let mut next = 0;
        for ch in text.chars() {
            let pos = ORDER[next..].iter().position(|(c, _)| *c == ch)?;
            out |= ORDER[next + pos].1;
            next += pos + 1;
        }
        Some(out)
    }
}

/// One granted resource scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResourceScope {
    pub context: Context,
    /// `None` for the `*` wildcard (every resource type we serve).
    pub resource: Option<ResourceType>,
    pub interactions: Interactions,
}

/// Non-resource capabilities granted by scope.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApiScopes {
    /// `admin`: the admin API.
    pub admin: bool,
    /// `audit.read`: the audit API.
    pub audit_read: bool,
}

/// The aliases this server understands (see the module documentation).
pub const ALIASES: &[&str] = &[
    "patient.read",
    "patient.write",
    "billing.read",
    "claims.write",
    "admin",
    "audit.read",
];

/// The scope vocabulary, for `scopes_supported` of the SMART discovery document: the SMART
/// v2 resource scopes with every permission (`cruds`, any ordered subset is understood
/// too) for each context and resource type (and `*`), the v1 `.read`/`.write` forms, and
/// the aliases.
pub fn vocabulary() -> Vec<String> {
    let mut out = Vec::new();
    for context in ["patient", "user", "system"] {
        let types = ResourceType::ALL.iter().map(|r| r.as_str()).chain(["*"]);
        for t in types {
            for permissions in ["cruds", "rs", "read", "write"] {
                out.push(format!("{context}/{t}.{permissions}"));
            }
        }
    }
    out.extend(ALIASES.iter().map(|a| a.to_string()));
    out
}

/// Scope strings longer than this are ignored (no real scope is this long).
const MAX_SCOPE_LEN: usize = 128;
/// At most this many scope strings are looked at.
const MAX_SCOPES: usize = 256;

/// What the token's scopes allow.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScopeSet {
    resources: Vec<ResourceScope>,
    api: ApiScopes,
    /// The recognised scope strings, as sent (for audit events).
    recognised: Vec<String>,
}

impl ScopeSet {
    /// Parses a space-separated `scope` claim (RFC 8693 / RFC 9068).
    pub fn parse(scope: &str) -> ScopeSet {
        Self::from_scopes(scope.split(' '))
    }

    /// Parses a list of scope strings (e.g. an `scp` array claim).
    pub fn from_scopes<'a>(scopes: impl IntoIterator<Item = &'a str>) -> ScopeSet {
        let mut set = ScopeSet::default();
        for s in scopes
            .into_iter()
            .filter(|s| !s.is_empty())
            .take(MAX_SCOPES)
        {
            if s.len() > MAX_SCOPE_LEN {
                continue;
            }
            if set.add(s) && !set.recognised.iter().any(|r| r == s) {
                set.recognised.push(s.to_string());
            }
        }
        set
    }

    /// Adds one scope; returns whether it was understood.
    fn add(&mut self, s: &str) -> bool {
        use Context::User;
        use ResourceType::{Claim, Patient};
        let rs = Interactions::READ | Interactions::SEARCH;
        let grant = |resource, interactions| ResourceScope {
            context: User,
            resource: Some(resource),
            interactions,
        };
        match s {
            "patient.read" => self.resources.push(grant(Patient, rs)),
            "patient.write" => self.resources.push(grant(
                Patient,
                Interactions::CREATE | Interactions::UPDATE | Interactions::DELETE,
            )),
            "billing.read" => {
                self.resources.push(grant(Claim, rs));
                self.resources.push(grant(Patient, rs));
            }
            "claims.write" => self
                .resources
                .push(grant(Claim, Interactions::CREATE | Interactions::UPDATE)),
            "admin" => self.api.admin = true,
            "audit.read" => self.api.audit_read = true,
            _ => match parse_resource_scope(s) {
                Some(scope) => self.resources.push(scope),
                None => return false,
            },
        }
        true
    }

    /// Whether some granted scope allows `interaction` on `resource` in `context`.
    /// Contexts never stand in for each other (`user/` does not allow `patient/` use).
    pub fn allows(
        &self,
        context: Context,
        resource: ResourceType,
        interaction: Interaction,
    ) -> bool {
        let wanted = Interactions::of(interaction);
        self.resources.iter().any(|g| {
            g.context == context
                && g.resource.is_none_or(|r| r == resource)
                && g.interactions.contains(wanted)
        })
    }

    /// The admin API (`admin`).
    pub fn admin(&self) -> bool {
        self.api.admin
    }

    /// The audit API (`audit.read`).
    pub fn audit_read(&self) -> bool {
        self.api.audit_read
    }

    pub fn resource_scopes(&self) -> &[ResourceScope] {
        &self.resources
    }

    /// The scope strings that were understood (unknown ones are dropped), for audit.
    pub fn recognised(&self) -> &[String] {
        &self.recognised
    }

    pub fn is_empty(&self) -> bool {
        self.resources.is_empty() && self.api == ApiScopes::default()
    }
}

fn parse_resource_scope(s: &str) -> Option<ResourceScope> {
    if s.contains('?') {
        // A v2 filtered scope narrows access in a way this layer cannot enforce.
        return None;
    }
    let (context, rest) = s.split_once('/')?;
    let context = match context {
        "user" => Context::User,
        "patient" => Context::Patient,
        "system" => Context::System,
        _ => return None,
    };
    let (resource, perms) = rest.split_once('.')?;
    let resource = match resource {
        "*" => None,
        name => Some(ResourceType::parse(name)?),
    };
    Some(ResourceScope {
        context,
        resource,
        interactions: Interactions::parse(perms)?,
    })
}

#[cfg(test)]
mod tests {
    use super::Context::*;
    use super::Interaction::*;
    use super::ResourceType::*;
    use super::*;

    fn allowed(set: &ScopeSet) -> Vec<(Context, ResourceType, Interaction)> {
        let mut out = Vec::new();
        for c in [User, Context::Patient, System] {
            for r in ResourceType::ALL {
                for i in [Create, Read, Update, Delete, Search] {
                    if set.allows(c, r, i) {
                        out.push((c, r, i));
                    }
                }
            }
        }
        out
    }

    #[test]
    fn v2_resource_scope_grants_exactly_its_letters() {
        let s = ScopeSet::parse("user/Patient.rs");
        assert_eq!(
            allowed(&s),
            vec![
                (User, ResourceType::Patient, Read),
                (User, ResourceType::Patient, Search)
            ]
        );
    }

    #[test]
    fn cruds_grants_everything_on_one_type() {
        let s = ScopeSet::parse("user/Observation.cruds");
        assert_eq!(allowed(&s).len(), 5);
        assert!(s.allows(User, Observation, Delete));
        assert!(!s.allows(User, ResourceType::Patient, Read));
    }

    #[test]
    fn wildcard_resource_covers_every_type_in_its_context_only() {
        let s = ScopeSet::parse("patient/*.rs");
        for r in ResourceType::ALL {
            assert!(s.allows(Context::Patient, r, Read));
            assert!(s.allows(Context::Patient, r, Search));
            assert!(!s.allows(Context::Patient, r, Update));
            assert!(!s.allows(User, r, Read));
            assert!(!s.allows(System, r, Read));
        }
    }

    #[test]
    fn system_scope() {
        let s = ScopeSet::parse("system/Claim.r");
        assert_eq!(allowed(&s), vec![(System, Claim, Read)]);
    }

    #[test]
    fn v1_scopes_map_to_v2_letters() {
        let read = ScopeSet::parse("user/Patient.read");
        assert!(read.allows(User, ResourceType::Patient, Read));
        assert!(read.allows(User, ResourceType::Patient, Search));
        assert!(!read.allows(User, ResourceType::Patient, Create));
        let write = ScopeSet::parse("user/Patient.write");
        assert!(write.allows(User, ResourceType::Patient, Create));
        assert!(write.allows(User, ResourceType::Patient, Update));
        assert!(write.allows(User, ResourceType::Patient, Delete));
        assert!(!write.allows(User, ResourceType::Patient, Read));
        let all = ScopeSet::parse("user/Patient.*");
        assert_eq!(allowed(&all).len(), 5);
    }

    #[test]
    fn aliases_are_documented_expansions() {
        let s = ScopeSet::parse("patient.read");
        assert_eq!(allowed(&s), allowed(&ScopeSet::parse("user/Patient.rs")));
        let s = ScopeSet::parse("patient.write");
        assert_eq!(allowed(&s), allowed(&ScopeSet::parse("user/Patient.cud")));
        let s = ScopeSet::parse("billing.read");
        assert_eq!(
            allowed(&s),
            allowed(&ScopeSet::parse("user/Patient.rs user/Claim.rs"))
        );
        let s = ScopeSet::parse("claims.write");
        assert_eq!(allowed(&s), allowed(&ScopeSet::parse("user/Claim.cu")));
        let s = ScopeSet::parse("admin audit.read");
        assert!(s.admin() && s.audit_read());
        assert!(
            allowed(&s).is_empty(),
            "admin scopes grant no clinical access"
        );
    }

    #[test]
    fn invalid_scopes_are_ignored_and_never_widen() {
        for bad in [
            "user/Patient.sr",                         // out of order
            "user/Patient.rr",                         // repeated letter
            "user/Patient.x",                          // unknown letter
            "user/Patient.",                           // empty permissions
            "user/Patient",                            // no permissions
            "User/Patient.rs",                         // context is case-sensitive
            "practitioner/Patient.rs",                 // unknown context
            "user/patient.rs",                         // resource type is case-sensitive
            "user/Encounter.rs",                       // a type we do not serve
            "user/**.rs",                              // not a wildcard
            "user/Observation.rs?category=laboratory", // filter we cannot enforce
            "Patient.read",
            "admin.write",
            "openid",
            "fhirUser",
            "/Patient.rs",
        ] {
            let s = ScopeSet::parse(bad);
            assert!(s.is_empty(), "{bad} must grant nothing");
            assert!(s.recognised().is_empty(), "{bad}");
        }
    }

    #[test]
    fn valid_scopes_survive_invalid_neighbours() {
        let s = ScopeSet::parse("openid  user/Patient.sr user/Claim.r bogus");
        assert_eq!(allowed(&s), vec![(User, Claim, Read)]);
        assert_eq!(s.recognised(), ["user/Claim.r"]);
    }

    #[test]
    fn overlong_scope_is_ignored() {
        let long = format!("user/Patient.rs{}", " ".repeat(0) + &"x".repeat(200));
        assert!(ScopeSet::parse(&long).is_empty());
    }

    #[test]
    fn interactions_parser_accepts_every_ordered_subset() {
        let letters = ['c', 'r', 'u', 'd', 's'];
        for mask in 1u8..32 {
            let text: String = letters
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, c)| *c)
                .collect();
            assert_eq!(
                Interactions::parse(&text).map(|i| i.bits()),
                Some(mask),
                "{text}"
            );
        }
    }
}
