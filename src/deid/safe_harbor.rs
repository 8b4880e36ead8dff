//! The Safe Harbor transformations of single values: FHIR dates to their year (or a
//! shifted day), ages over 89, ZIP codes to ZIP3 with the restricted prefixes.

use chrono::{Datelike, Days, NaiveDate};
use regex_lite::Regex;
use std::collections::BTreeSet;
use std::sync::LazyLock;

/// FHIR `date`, `dateTime` and `instant` (the lexical forms of R4).
static DATE: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(
        r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:Z|[+-]\d{2}:\d{2})?)?)?)?$",
    )
    .ok()
});

static ZIP: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"^(\d{3})\d{2}(?:-\d{4})?$").ok());

/// A FHIR date of any precision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FhirDate {
    pub year: i32,
    /// The day, when the value has one.
    pub day: Option<NaiveDate>,
}

/// `s` as a FHIR date, dateTime or instant; `None` for anything else.
pub fn parse_date(s: &str) -> Option<FhirDate> {
    let caps = DATE.as_ref()?.captures(s)?;
    let year: i32 = caps.get(1)?.as_str().parse().ok()?;
    let month = caps.get(2).map(|m| m.as_str().parse::<u32>());
    let day = caps.get(3).map(|m| m.as_str().parse::<u32>());
    let day = match (month, day) {
        (Some(Ok(m)), Some(Ok(d))) => Some(NaiveDate::from_ymd_opt(year, m, d)?),
        (Some(Ok(m)), None) if (1..=12).contains(&m) => None,
        (None, None) => None,
        _ => return None,
    };
    Some(FhirDate { year, day })
}

/// Whether the patient born on `birth` is at least `from` years old on `as_of`. Without
/// a day, the oldest the patient can be decides (an unsure age is aggregated).
pub fn aged(birth: &FhirDate, as_of: NaiveDate, from: u32) -> bool {
    let age = match birth.day {
        Some(b) => as_of.years_since(b).map_or(0, i64::from),
        None => i64::from(as_of.year() - birth.year),
    };
    age >= i64::from(from)
}

/// `d` moved by `days` as a day (`YYYY-MM-DD`), or only its year when it has no day.
pub fn shifted(d: &FhirDate, days: i64) -> Option<String> {
    let Some(day) = d.day else {
        return Some(format!("{:04}", d.year));
    };
    let n = Days::new(days.unsigned_abs());
    let moved = if days >= 0 {
        day.checked_add_days(n)?
    } else {
        day.checked_sub_days(n)?
    };
    Some(moved.format("%Y-%m-%d").to_string())
}

/// The ZIP3 of a US ZIP code (`12345` or `12345-6789`): `000` when the prefix is
/// restricted; `None` for anything that is not a ZIP code.
pub fn zip3(s: &str, restricted: &BTreeSet<String>) -> Option<String> {
    let prefix = ZIP.as_ref()?.captures(s)?.get(1)?.as_str();
    Some(if restricted.contains(prefix) {
        "000".into()
    } else {
        prefix.into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn fhir_dates_of_every_precision_parse_and_nothing_else() {
        assert_eq!(parse_date("1950").unwrap().year, 1950);
        assert_eq!(parse_date("1950-02").unwrap().day, None);
        assert_eq!(
            parse_date("1950-02-28").unwrap().day,
            Some(day("1950-02-28"))
        );
        assert!(parse_date("2024-05-01T10:20:30.123+02:00").is_some());
        assert!(parse_date("2024-05-01T10:20:30Z").is_some());
        for bad in [
            "1950-02-30",
            "1950-13",
            "50-01-01",
            "John",
            "",
            "1950-01-01 x",
        ] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn ages_over_89_are_aggregated_at_90() {
        let as_of = day("2026-12-01");
        let b = |s| parse_date(s).unwrap();
        assert!(
            !aged(&b("1937-12-02"), as_of, 90),
            "89 the day before the birthday"
        );
        assert!(aged(&b("1936-12-01"), as_of, 90), "90 on the birthday");
        assert!(!aged(&b("1936-12-02"), as_of, 90), "89 until then");
        assert!(aged(&b("1900-01-01"), as_of, 90));
        assert!(!aged(&b("2000-06-01"), as_of, 90));
        // Year only: 2026 - 1936 = 90 at most: aggregated.
        assert!(aged(&b("1936"), as_of, 90));
        assert!(!aged(&b("1937"), as_of, 90));
    }

    #[test]
    fn zip3_keeps_three_digits_and_zeroes_restricted_areas() {
        let restricted: BTreeSet<String> = [
            "036", "059", "063", "102", "203", "556", "692", "790", "821", "823", "830", "831",
            "878", "879", "884", "890", "893",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(zip3("02139", &restricted).as_deref(), Some("021"));
        assert_eq!(zip3("02139-4307", &restricted).as_deref(), Some("021"));
        for p in &restricted {
            assert_eq!(
                zip3(&format!("{p}42"), &restricted).as_deref(),
                Some("000"),
                "{p}"
            );
        }
        for bad in ["0213", "021394", "ABCDE", "02139-43", " 02139"] {
            assert_eq!(zip3(bad, &restricted), None, "{bad}");
        }
    }

    #[test]
    fn shifting_moves_days_and_keeps_year_only_dates_coarse() {
        let d = parse_date("2024-03-01").unwrap();
        assert_eq!(shifted(&d, -1).as_deref(), Some("2024-02-29"));
        assert_eq!(shifted(&d, 31).as_deref(), Some("2024-04-01"));
        assert_eq!(
            shifted(&parse_date("2024").unwrap(), 5).as_deref(),
            Some("2024")
        );
    }
}
