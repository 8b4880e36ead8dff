//! What an authenticator app computes (RFC 6238: SHA-1, 6 digits, 30 s), for the console
//! tests to type codes the way a user would.

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The code for raw `secret` at `unix` seconds.
pub fn code_at(secret: &[u8], unix: u64) -> String {
    code(
        totp_rs::Secret::new(secret.to_vec().into_boxed_slice()),
        unix,
    )
}

/// The code for a base32 `secret` (as the enrolment page shows it) at `unix` seconds.
pub fn code_b32_at(secret_b32: &str, unix: u64) -> String {
    code(totp_rs::Secret::try_from_base32(secret_b32).unwrap(), unix)
}

fn code(secret: totp_rs::Secret, unix: u64) -> String {
    totp_rs::Builder::new()
        .with_algorithm(totp_rs::Algorithm::SHA1)
        .with_digits(6)
        .with_step_duration(30)
        .with_secret(secret)
        .build()
        .unwrap()
        .generate(unix)
        .to_string()
}
