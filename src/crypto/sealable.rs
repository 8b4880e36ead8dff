//! Typed values that can be sealed: each has one byte encoding.

use chrono::NaiveDate;
use zeroize::Zeroizing;

/// A value type with a canonical byte encoding for sealing.
pub trait Sealable: Sized {
    /// What the value is called in an error ("UTF-8 text", "date", ...).
    const KIND: &'static str;
    fn encode(&self) -> Zeroizing<Vec<u8>>;
    /// `None` when the bytes are not a valid value of this type.
    fn decode(bytes: &[u8]) -> Option<Self>;
}

impl Sealable for String {
    const KIND: &'static str = "UTF-8 text";
    fn encode(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.as_bytes().to_vec())
    }
    fn decode(bytes: &[u8]) -> Option<Self> {
        String::from_utf8(bytes.to_vec()).ok()
    }
}

/// Dates as ISO `YYYY-MM-DD` text.
impl Sealable for NaiveDate {
    const KIND: &'static str = "date";
    fn encode(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.format("%Y-%m-%d").to_string().into_bytes())
    }
    fn decode(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()
    }
}

/// JSON documents (telecom, address, observation values) as compact JSON text.
impl Sealable for serde_json::Value {
    const KIND: &'static str = "JSON document";
    fn encode(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.to_string().into_bytes())
    }
    fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

impl Sealable for Vec<u8> {
    const KIND: &'static str = "bytes";
    fn encode(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.clone())
    }
    fn decode(bytes: &[u8]) -> Option<Self> {
        Some(bytes.to_vec())
    }
}

/// Whole numbers (claim amounts in cents) as decimal text.
impl Sealable for i64 {
    const KIND: &'static str = "integer";
    fn encode(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.to_string().into_bytes())
    }
    fn decode(bytes: &[u8]) -> Option<Self> {
        std::str::from_utf8(bytes).ok()?.parse().ok()
    }
}
