//! Request ids: accepted from `X-Request-Id` only when short and made of safe characters,
//! otherwise generated, so that logs, responses and audit events never carry
//! caller-controlled text. One type for the edge, the logs and the audit trail.

use std::fmt;

pub const HEADER: &str = "x-request-id";
const MAX_LEN: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestId(String);

impl RequestId {
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().simple().to_string())
    }

    /// Accepts an inbound id only if it is 1..=64 characters of `[A-Za-z0-9._-]`.
    pub fn parse(candidate: &str) -> Option<Self> {
        let ok = !candidate.is_empty()
            && candidate.len() <= MAX_LEN
            && candidate
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        ok.then(|| Self(candidate.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_safe_tokens() {
        assert_eq!(
            RequestId::parse("abc-123_x.y").unwrap().as_str(),
            "abc-123_x.y"
        );
    }

    #[test]
    fn refuses_unsafe_or_long_values() {
        assert!(RequestId::parse("").is_none());
        assert!(RequestId::parse("a\nb").is_none());
        assert!(RequestId::parse("a b").is_none());
        assert!(RequestId::parse("<script>").is_none());
        assert!(RequestId::parse(&"a".repeat(65)).is_none());
    }
}
