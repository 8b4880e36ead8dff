//! TOTP (RFC 6238: SHA-1, 6 digits, 30-second steps, ±1 step) for console users: codes,
//! setup links and QR codes. The secret is sealed with the keyring and stored by
//! [`super::store::totp`], which remembers the last accepted step so a code cannot be used
//! twice, and locks the check for a while after five wrong codes in a row — twice as long
//! for each further lock-out before a code is accepted ([`lockout_for`]).

use crate::error::AppError;
use chrono::{DateTime, Utc};
use subtle::ConstantTimeEq;
use totp_rs::{Algorithm, Builder, Secret, Totp};
use uuid::Uuid;
use zeroize::Zeroizing;

pub const STEP_SECS: u64 = 30;
pub const MAX_FAILURES: i32 = 5;
/// The longest lock-out, however many came before it.
pub const MAX_LOCKOUT_SECS: i64 = 86_400;

/// How long the lock-out that follows `earlier` lock-outs in a row lasts: `base` doubled
/// for each, at most [`MAX_LOCKOUT_SECS`] — so someone who holds the provider password
/// gets ever fewer guesses a day instead of a steady ~480.
pub fn lockout_for(base: chrono::Duration, earlier: i32) -> chrono::Duration {
    let cap = chrono::Duration::seconds(MAX_LOCKOUT_SECS);
    let factor = 1i32.checked_shl(u32::try_from(earlier.clamp(0, 30)).unwrap_or(30));
    factor
        .and_then(|f| base.checked_mul(f))
        .map_or(cap, |d| d.min(cap))
        .max(base.min(cap))
}

pub(crate) fn totp(secret: &[u8]) -> Result<Totp, AppError> {
    Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(6)
        .with_skew(1)
        .with_step_duration(STEP_SECS)
        .with_secret(Secret::new(secret.to_vec().into_boxed_slice()))
        .build()
        .map_err(|_| AppError::internal("invalid TOTP secret"))
}

/// The `otpauth://` setup URI for an authenticator app (label `Custodian:<account>`).
pub fn otpauth_uri(secret_base32: &str, account: &str) -> Result<String, AppError> {
    let mut u =
        url::Url::parse("otpauth://totp/").map_err(|_| AppError::internal("otpauth url"))?;
    u.set_path(&format!("Custodian:{account}"));
    u.query_pairs_mut()
        .append_pair("secret", secret_base32)
        .append_pair("issuer", "Custodian")
        .append_pair("algorithm", "SHA1")
        .append_pair("digits", "6")
        .append_pair("period", "30");
    Ok(u.to_string())
}

/// The setup URI as a QR code to draw in SVG: `(side, path)` where `side` is the side
/// length in modules (quiet zone included) and `path` one SVG path of the dark modules.
/// Drawn server-side so the page needs no script and no image endpoint (the CSP holds).
pub fn qr_svg(uri: &str) -> Result<(i32, String), AppError> {
    use qrcodegen::{QrCode, QrCodeEcc};
    use std::fmt::Write;
    const QUIET: i32 = 4;
    let qr = QrCode::encode_text(uri, QrCodeEcc::Medium)
        .map_err(|_| AppError::internal("setup link too long for a QR code"))?;
    let mut path = String::new();
    for y in 0..qr.size() {
        for x in 0..qr.size() {
            if qr.get_module(x, y) {
                let _ = write!(path, "M{},{}h1v1h-1z", x + QUIET, y + QUIET);
            }
        }
    }
    Ok((qr.size() + 2 * QUIET, path))
}

/// A user's TOTP enrolment.
pub struct Enrolment {
    pub id: Uuid,
    pub secret: Zeroizing<Vec<u8>>,
    pub confirmed: bool,
    pub last_step: Option<i64>,
    pub failures: i32,
    pub locked_until: Option<DateTime<Utc>>,
    /// Lock-outs in a row since the last accepted code (each doubles the next one).
    pub lockouts: i32,
}

impl Enrolment {
    /// The secret as base32 text for an authenticator app.
    pub fn secret_base32(&self) -> String {
        Secret::new(self.secret.to_vec().into_boxed_slice()).to_base32()
    }
}

/// The result of checking a code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    Accepted,
    /// Wrong, malformed or replayed code; `locked` when this failure started a lock-out.
    Rejected {
        locked: bool,
    },
    /// Locked out: the code was not even looked at.
    Locked,
}

/// The time step (±1) whose code equals `code` and is later than `last_step`.
pub fn matching_step(
    secret: &[u8],
    code: &str,
    now_secs: u64,
    last_step: Option<i64>,
) -> Result<Option<i64>, AppError> {
    let code = code.trim();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    let t = totp(secret)?;
    let current = now_secs / STEP_SECS;
    let mut found = None;
    for step in [current.saturating_sub(1), current, current + 1] {
        let expected = t.generate(step * STEP_SECS).to_string();
        let equal: bool = expected.as_bytes().ct_eq(code.as_bytes()).into();
        let step = i64::try_from(step).map_err(|_| AppError::internal("time step overflow"))?;
        if equal && last_step.is_none_or(|last| step > last) {
            found = Some(step);
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"12345678901234567890";

    #[test]
    fn rfc6238_vector_and_window() {
        // RFC 6238 appendix B, SHA-1, T = 59 s: 94287082 (8 digits) → 287082 (6 digits).
        assert_eq!(
            matching_step(SECRET, "287082", 59, None).ok(),
            Some(Some(1))
        );
        // One step later still accepted (−1 window), two steps later not.
        assert_eq!(
            matching_step(SECRET, "287082", 89, None).ok(),
            Some(Some(1))
        );
        assert_eq!(matching_step(SECRET, "287082", 119, None).ok(), Some(None));
    }

    #[test]
    fn replayed_or_older_step_is_refused() {
        assert_eq!(
            matching_step(SECRET, "287082", 59, Some(1)).ok(),
            Some(None)
        );
        assert_eq!(
            matching_step(SECRET, "287082", 59, Some(2)).ok(),
            Some(None)
        );
    }

    #[test]
    fn lock_outs_double_up_to_a_day() {
        let base = chrono::Duration::seconds(900);
        let secs = |n| lockout_for(base, n).num_seconds();
        assert_eq!(secs(0), 900);
        assert_eq!(secs(1), 1800);
        assert_eq!(secs(2), 3600);
        assert_eq!(secs(6), 57_600);
        assert_eq!(secs(7), 86_400);
        assert_eq!(secs(1000), 86_400);
        assert_eq!(secs(-1), 900);
    }

    #[test]
    fn malformed_codes_are_refused() {
        for code in ["", "28708", "2870822", "28708a"] {
            assert_eq!(matching_step(SECRET, code, 59, None).ok(), Some(None));
        }
    }

    #[test]
    fn the_setup_link_is_drawn_as_a_qr_code_with_a_quiet_zone() {
        let uri = otpauth_uri("JBSWY3DPEHPK3PXP", "alice").unwrap();
        let (side, path) = qr_svg(&uri).unwrap();
        // Version 5+ for a link this long: at least 37 modules plus 8 of quiet zone.
        assert!(side >= 45, "{side}");
        // The top-left finder pattern starts right after the quiet zone.
        assert!(path.starts_with("M4,4h1v1h-1z"));
        assert!(
            path.chars()
                .all(|c| c.is_ascii_digit() || "Mhvz,-1".contains(c))
        );
        assert_ne!(qr_svg("otpauth://totp/other").unwrap().1, path);
    }
}
