//! The confidentiality of a patient record (HL7 v3 `Confidentiality`, shown in the
//! resource's `meta.security`) and which basis of access each level admits. One table,
//! [`admits`]: the decision point asks it, the search scopes carry it into SQL
//! (`db/scope.rs`), `custodian policy` prints it ([`markdown_table`]).
//!
//! | level | care team | facility (billing, services, …) | own record | break-glass grant |
//! |---|---|---|---|---|
//! | N normal | yes | yes | yes | yes |
//! | R restricted (VIP, workforce member, sensitive service) | yes | **no** | yes | yes |
//! | V very restricted | **no** | **no** | yes | yes |

use super::Basis;

/// HL7 v3 Confidentiality codes used by Custodian.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Confidentiality {
    /// N: normal.
    #[default]
    Normal,
    /// R: restricted — outside the care team only under break-glass; no facility-basis
    /// access (billing, services).
    Restricted,
    /// V: very restricted — break-glass for everyone but the patient themself.
    VeryRestricted,
}

/// The code system of [`Confidentiality`] in `meta.security`.
pub const SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality";

impl Confidentiality {
    pub const ALL: [Confidentiality; 3] = [
        Confidentiality::Normal,
        Confidentiality::Restricted,
        Confidentiality::VeryRestricted,
    ];

    /// The HL7 code (N, R, V), as stored in `patients.confidentiality`.
    pub fn code(self) -> &'static str {
        match self {
            Confidentiality::Normal => "N",
            Confidentiality::Restricted => "R",
            Confidentiality::VeryRestricted => "V",
        }
    }

    pub fn display(self) -> &'static str {
        match self {
            Confidentiality::Normal => "normal",
            Confidentiality::Restricted => "restricted",
            Confidentiality::VeryRestricted => "very restricted",
        }
    }

    pub fn from_code(code: &str) -> Option<Confidentiality> {
        Confidentiality::ALL.into_iter().find(|c| c.code() == code)
    }
}

/// Does a permit on `basis` reach a record of `level`? (The table in the module
/// documentation.)
pub fn admits(basis: Basis, level: Confidentiality) -> bool {
    use Confidentiality::*;
    match (basis, level) {
        (_, Normal) => true,
        (Basis::OwnRecord | Basis::BreakGlass(_), _) => true,
        (Basis::CareTeam, Restricted) => true,
        (Basis::CareTeam, VeryRestricted) | (Basis::Facility, Restricted | VeryRestricted) => false,
    }
}

/// The levels a search on `basis` may return (for the SQL of a search scope).
pub fn admitted_codes(basis: Basis) -> Vec<&'static str> {
    Confidentiality::ALL
        .into_iter()
        .filter(|l| admits(basis, *l))
        .map(Confidentiality::code)
        .collect()
}

/// The table as Markdown, for `custodian policy` and docs/break-glass.md.
pub fn markdown_table() -> String {
    let bases = [
        ("care team", Basis::CareTeam),
        ("facility", Basis::Facility),
        ("own record", Basis::OwnRecord),
        (
            "break-glass grant",
            Basis::BreakGlass(crate::domain::GrantId(uuid::Uuid::nil())),
        ),
    ];
    let mut out = String::from("| Confidentiality |");
    for (name, _) in bases {
        out.push_str(&format!(" {name} |"));
    }
    out.push_str("\n|---|---|---|---|---|\n");
    for level in Confidentiality::ALL {
        out.push_str(&format!("| {} ({}) |", level.code(), level.display()));
        for (_, basis) in bases {
            out.push_str(if admits(basis, level) {
                " yes |"
            } else {
                " no |"
            });
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for c in Confidentiality::ALL {
            assert_eq!(Confidentiality::from_code(c.code()), Some(c));
        }
        assert_eq!(Confidentiality::from_code("U"), None);
    }

    #[test]
    fn the_table_is_the_documented_one() {
        let t = markdown_table();
        assert!(t.contains("| N (normal) | yes | yes | yes | yes |"), "{t}");
        assert!(
            t.contains("| R (restricted) | yes | no | yes | yes |"),
            "{t}"
        );
        assert!(
            t.contains("| V (very restricted) | no | no | yes | yes |"),
            "{t}"
        );
    }
}
