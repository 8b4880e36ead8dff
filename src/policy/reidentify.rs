//! Re-identification of an export pseudonym (issue 17; docs/export.md#re-identification):
//! who may turn a pseudonym back into a patient, and what else the act needs. Pure, like
//! the rest of the policy.
//!
//! A de-identified export is safe to hand out because nobody outside can link it back;
//! re-identification undoes exactly that, so it is one person's deliberate, justified and
//! recorded act: only the role the configuration names (`reidentify.role`, default
//! `privacy_officer`), only with a TOTP code entered for this very request (however
//! recent the last one: the step-up window does not carry over), and only with a written
//! justification, which is sealed at rest and never audited or logged.
//!
//! The `[reidentify]` configuration section is owned here; `config` aggregates it.

use super::Role;
use super::admin::CONSOLE_ROLES;
use serde::Deserialize;
use std::fmt;

/// `[reidentify]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReidentifyConfig {
    /// The one role that may re-identify a pseudonym.
    pub role: Role,
}

impl Default for ReidentifyConfig {
    fn default() -> Self {
        Self {
            role: Role::PrivacyOfficer,
        }
    }
}

impl ReidentifyConfig {
    /// The role must be one a person signs in to the console with (it is the only place
    /// with a per-request TOTP check): `privacy_officer` or `admin`.
    pub fn validate(&self) -> Result<(), super::break_glass::Invalid> {
        if CONSOLE_ROLES.contains(&self.role) {
            Ok(())
        } else {
            Err((
                "reidentify.role",
                "must be a console role (privacy_officer or admin)",
            ))
        }
    }
}

/// Why a re-identification is refused, in the order it is checked: the role before
/// anything else (no code is consumed, nothing is looked up), then the step-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The person does not hold the configured role.
    RoleMissing,
    /// No TOTP code was accepted for this request.
    StepUpRequired,
}

/// Did a TOTP code accepted for this very request come with it?
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepUp {
    CodeAccepted,
    Missing,
}

/// May a person holding `roles` re-identify now? Only the configured role
/// ([`super::export::may_reidentify`]), and only with a code accepted for this request.
pub fn decide(roles: &[Role], config: &ReidentifyConfig, step_up: StepUp) -> Result<(), Refused> {
    if !super::export::may_reidentify(roles, config.role) {
        return Err(Refused::RoleMissing);
    }
    match step_up {
        StepUp::CodeAccepted => Ok(()),
        StepUp::Missing => Err(Refused::StepUpRequired),
    }
}

/// Shortest and longest justification (characters, after trimming).
pub const JUSTIFICATION_MIN: usize = 20;
pub const JUSTIFICATION_MAX: usize = 2000;

/// The fixed answer to a missing, short, long or malformed justification (it never
/// repeats the text).
pub const JUSTIFICATION_INVALID: &str = "The field 'justification' must be 20 to 2000 characters without control characters: say why this pseudonym must be re-identified.";

/// Why a pseudonym is re-identified: 20..=2000 characters, no control characters but
/// newlines and tabs. Workforce free text about a patient, so it is sealed at rest and its
/// `Debug` prints nothing of it.
#[derive(Clone, PartialEq, Eq)]
pub struct Justification(String);

impl Justification {
    pub fn parse(text: Option<&str>) -> Result<Justification, &'static str> {
        let text = text.unwrap_or_default().trim();
        let n = text.chars().count();
        let controls = text
            .chars()
            .any(|c| c.is_control() && !matches!(c, '\n' | '\t' | '\r'));
        if !(JUSTIFICATION_MIN..=JUSTIFICATION_MAX).contains(&n) || controls {
            return Err(JUSTIFICATION_INVALID);
        }
        Ok(Justification(text.to_string()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Justification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Justification([redacted])")
    }
}

/// The rule as a Markdown table, for `custodian policy` and docs/export.md.
pub fn markdown_table() -> String {
    format!(
        "| Operation | Allowed to | Needs |\n|---|---|---|\n| re-identify an export pseudonym | the role `reidentify.role` names (default `{}`; must be one of {}) | a TOTP code entered with the request (every time), a justification of {JUSTIFICATION_MIN} to {JUSTIFICATION_MAX} characters (sealed at rest) |\n",
        ReidentifyConfig::default().role.as_str(),
        CONSOLE_ROLES
            .iter()
            .map(|r| format!("`{}`", r.as_str()))
            .collect::<Vec<_>>()
            .join(", "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every set of roles (all 64), with every configured role and step-up state, against
    /// the rule stated again here.
    #[test]
    fn every_role_set_configured_role_and_step_up_matches_the_reidentify_policy() {
        for mask in 0u32..(1 << Role::ALL.len()) {
            let roles: Vec<Role> = Role::ALL
                .into_iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, r)| r)
                .collect();
            for configured in Role::ALL {
                let config = ReidentifyConfig { role: configured };
                for step_up in [StepUp::CodeAccepted, StepUp::Missing] {
                    let want = if !roles.contains(&configured) {
                        Err(Refused::RoleMissing)
                    } else if step_up == StepUp::Missing {
                        Err(Refused::StepUpRequired)
                    } else {
                        Ok(())
                    };
                    assert_eq!(
                        decide(&roles, &config, step_up),
                        want,
                        "{roles:?} {configured:?} {step_up:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_default_role_is_privacy_officer_and_only_console_roles_are_accepted() {
        assert_eq!(ReidentifyConfig::default().role, Role::PrivacyOfficer);
        for role in Role::ALL {
            let ok = ReidentifyConfig { role }.validate().is_ok();
            assert_eq!(
                ok,
                matches!(role, Role::PrivacyOfficer | Role::Admin),
                "{role:?}"
            );
        }
    }

    #[test]
    fn justifications_are_bounded_and_never_printed() {
        let ok = "Subpoena 2026-114: confirm identity of record";
        assert!(Justification::parse(None).is_err());
        assert!(Justification::parse(Some("   ")).is_err());
        assert!(Justification::parse(Some(&"x".repeat(19))).is_err());
        assert!(Justification::parse(Some(&format!("  {}  ", "x".repeat(20)))).is_ok());
        assert!(Justification::parse(Some(&"x".repeat(2001))).is_err());
        assert!(Justification::parse(Some(&format!("{ok}\u{0}"))).is_err());
        let j = Justification::parse(Some(ok)).unwrap();
        assert_eq!(j.expose(), ok);
        assert_eq!(format!("{j:?}"), "Justification([redacted])");
        let err = Justification::parse(Some(&"secret!".repeat(2))).unwrap_err();
        assert!(!err.contains("secret"), "{err}");
    }

    #[test]
    fn the_table_names_the_default_role_and_the_needs() {
        let t = markdown_table();
        assert!(t.contains("default `privacy_officer`"), "{t}");
        assert!(t.contains("TOTP code") && t.contains("20 to 2000"), "{t}");
    }
}
