//! Validated values that cross the API boundary ("parse, don't validate"). Every error
//! names the field and the rule — never the submitted value.

use crate::error::AppError;
use chrono::NaiveDate;
use std::fmt;

/// An input error: the field (a path in our schema) and the rule it broke.
pub fn invalid(field: &'static str, rule: &'static str) -> AppError {
    AppError::unprocessable(format!("Invalid field '{field}': {rule}."))
}

/// Control characters and the Unicode line and paragraph separators (U+2028, U+2029),
/// which break a line like `\n` does for many readers (JavaScript, editors, log viewers)
/// but are not `char::is_control`.
fn breaks_a_line_or_controls(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')
}

fn no_control_chars(s: &str) -> bool {
    !s.chars().any(breaks_a_line_or_controls)
}

/// Bounded single-line text (names, cities): 1..=max characters, no control characters
/// and no line or paragraph separators.
pub fn bounded_text(field: &'static str, value: &str, max: usize) -> Result<String, AppError> {
    let v = value.trim();
    if v.is_empty() || v.chars().count() > max || !no_control_chars(v) {
        return Err(match v.is_empty() {
            true => invalid(field, "must not be empty"),
            false => invalid(field, "too long or contains control characters"),
        });
    }
    Ok(v.to_string())
}

/// Medical record number: 1–32 characters of letters, digits and dashes. Stored as given
/// (trimmed); its blind index uses the crypto module's normalisation.
#[derive(Clone, PartialEq, Eq)]
pub struct Mrn(String);

impl Mrn {
    pub fn parse(value: &str) -> Result<Mrn, AppError> {
        let v = value.trim();
        let ok = !v.is_empty()
            && v.len() <= 32
            && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        ok.then(|| Mrn(v.to_string()))
            .ok_or_else(|| invalid("identifier[mrn].value", "1-32 letters, digits or dashes"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// US social security number, kept as `123-45-6789`.
#[derive(Clone, PartialEq, Eq)]
pub struct Ssn(String);

impl Ssn {
    pub fn parse(value: &str) -> Result<Ssn, AppError> {
        let digits: String = value
            .trim()
            .chars()
            .filter(|c| *c != '-' && *c != ' ')
            .collect();
        let ok = digits.len() == 9
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with("000")
            && !digits.starts_with("666")
            && !digits.starts_with('9')
            && &digits[3..5] != "00"
            && &digits[5..] != "0000";
        ok.then(|| {
            Ssn(format!(
                "{}-{}-{}",
                &digits[..3],
                &digits[3..5],
                &digits[5..]
            ))
        })
        .ok_or_else(|| invalid("identifier[ssn].value", "must be a valid SSN (AAA-GG-SSSS)"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! redacted_debug {
    ($($t:ty),*) => {$(
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("[redacted]")
            }
        }
    )*};
}
redacted_debug!(Mrn, Ssn);

/// A FHIR `date` of birth: YYYY-MM-DD, not in the future, not before 1880.
pub fn birth_date(value: &str) -> Result<NaiveDate, AppError> {
    // FHIR dates are zero-padded; chrono alone would also accept "1980-1-1".
    if value.len() != 10 {
        return Err(invalid("birthDate", "must be a date YYYY-MM-DD"));
    }
    let d = NaiveDate::parse_from_str(value, "%Y-%m-%d")
        .map_err(|_| invalid("birthDate", "must be a date YYYY-MM-DD"))?;
    let today = chrono::Utc::now().date_naive();
    if d > today || d < NaiveDate::from_ymd_opt(1880, 1, 1).unwrap_or(d) {
        return Err(invalid("birthDate", "must be a past date after 1880"));
    }
    Ok(d)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gender {
    Male,
    Female,
    Other,
    Unknown,
}

impl Gender {
    pub fn parse(value: &str) -> Result<Gender, AppError> {
        match value {
            "male" => Ok(Gender::Male),
            "female" => Ok(Gender::Female),
            "other" => Ok(Gender::Other),
            "unknown" => Ok(Gender::Unknown),
            _ => Err(invalid("gender", "must be male, female, other or unknown")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Gender::Male => "male",
            Gender::Female => "female",
            Gender::Other => "other",
            Gender::Unknown => "unknown",
        }
    }
}

/// Checks an array's length against its bound.
pub fn bounded_len<T>(field: &'static str, items: &[T], max: usize) -> Result<(), AppError> {
    if items.len() > max {
        return Err(invalid(field, "has too many entries"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mrn_accepts_identifiers_and_refuses_junk() {
        assert_eq!(Mrn::parse(" MRN-001 ").unwrap().as_str(), "MRN-001");
        assert!(Mrn::parse("").is_err());
        assert!(Mrn::parse("a b").is_err());
        assert!(Mrn::parse(&"1".repeat(33)).is_err());
        assert!(Mrn::parse("<script>").is_err());
    }

    #[test]
    fn ssn_is_canonicalised_and_checked() {
        assert_eq!(Ssn::parse("123456789").unwrap().as_str(), "123-45-6789");
        assert_eq!(Ssn::parse("123-45-6789").unwrap().as_str(), "123-45-6789");
        for bad in [
            "000-12-3456",
            "666-12-3456",
            "900-12-3456",
            "123-00-4567",
            "123-45-0000",
            "12-345-678",
            "abc",
        ] {
            assert!(Ssn::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn errors_name_the_field_but_not_the_value() {
        let err = Ssn::parse("CANARY-999").err().unwrap().to_string();
        assert!(err.contains("identifier[ssn]"));
        assert!(!err.contains("CANARY"));
    }

    #[test]
    fn identifiers_debug_as_redacted() {
        assert_eq!(format!("{:?}", Mrn::parse("M1").unwrap()), "[redacted]");
    }

    #[test]
    fn birth_dates() {
        assert!(birth_date("1980-02-29").is_ok());
        assert!(birth_date("1981-02-29").is_err());
        assert!(birth_date("3000-01-01").is_err());
        assert!(birth_date("1980-1-1").is_err());
    }

    #[test]
    fn bounded_text_refuses_control_characters() {
        assert!(bounded_text("name[0].family", "O'Brien", 100).is_ok());
        assert!(bounded_text("name[0].family", "a\u{0}b", 100).is_err());
        for separator in ["\n", "\r", "\u{85}", "\u{2028}", "\u{2029}"] {
            let text = format!("Line{separator}Break");
            assert!(
                bounded_text("name[0].family", &text, 100).is_err(),
                "{separator:?}"
            );
        }
        assert!(bounded_text("name[0].family", "   ", 100).is_err());
        assert!(bounded_text("name[0].family", &"x".repeat(101), 100).is_err());
    }
}

/// The FHIR datatypes request bodies share, as they arrive: each resource's input names
/// them, and its validation decides which of their parts it accepts.
pub mod input {
    use super::{bounded_text, invalid};
    use crate::error::AppError;
    use serde::Deserialize;
    use serde_json::{Value, json};

    /// A `Reference`: only a literal reference (`Patient/{id}`) is accepted.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Reference {
        pub reference: String,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Coding {
        pub system: Option<String>,
        pub code: String,
        pub display: Option<String>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct CodeableConcept {
        pub coding: Vec<Coding>,
        pub text: Option<String>,
    }

    /// A `Quantity` (`value[x]` of observations).
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Quantity {
        value: f64,
        unit: String,
        system: Option<String>,
        code: Option<String>,
    }

    impl Quantity {
        /// The validated quantity as the FHIR JSON of `valueQuantity`.
        pub fn validate(self) -> Result<Value, AppError> {
            if !self.value.is_finite() || self.value.abs() >= 1e12 {
                return Err(invalid(
                    "valueQuantity.value",
                    "must be a number below 10^12",
                ));
            }
            let mut quantity = json!({
                "value": self.value,
                "unit": bounded_text("valueQuantity.unit", &self.unit, 40)?,
            });
            if let Some(system) = &self.system {
                let s = bounded_text("valueQuantity.system", system, 200)?;
                let scheme = ["http://", "https://", "urn:"];
                if !scheme.iter().any(|p| s.starts_with(p)) || s.contains(char::is_whitespace) {
                    return Err(invalid("valueQuantity.system", "must be a URI"));
                }
                quantity["system"] = json!(s);
            }
            if let Some(c) = &self.code {
                quantity["code"] = json!(bounded_text("valueQuantity.code", c, 40)?);
            }
            Ok(quantity)
        }
    }
}

pub const LOINC: &str = "http://loinc.org";

/// A LOINC code: 1–5 digits, a dash, one check digit.
pub fn loinc_code(field: &'static str, value: &str) -> Result<String, AppError> {
    let ok = match value.split_once('-') {
        Some((num, check)) => {
            (1..=5).contains(&num.len())
                && num.bytes().all(|b| b.is_ascii_digit())
                && check.len() == 1
                && check.bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    };
    ok.then(|| value.to_string())
        .ok_or_else(|| invalid(field, "must be a LOINC code such as 8867-4"))
}
