//! Console recovery codes: ten single-use codes shown once after TOTP enrolment, each
//! accepted once in place of a TOTP code. Only argon2id hashes are stored
//! ([`super::store::recovery`]).
//!
//! A code reads `ssss-xxxx-xxxx-xxxx` (lowercase Crockford base32): the first group is a
//! selector that finds the one stored row to verify (so a guess costs one argon2
//! verification), the other twelve characters are the 60-bit secret. Guessing is further
//! bounded by the TOTP lock-out, which counts wrong recovery codes too.

use crate::crypto::password;
use crate::error::AppError;
use rand::Rng;
use zeroize::Zeroizing;

pub const COUNT: usize = 10;
const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
pub(crate) const SELECTOR_LEN: usize = 4;
const CODE_LEN: usize = 16;

/// A freshly generated code: its text (shown once) and what is stored.
pub struct NewCode {
    pub text: Zeroizing<String>,
    pub(crate) selector: String,
    pub(crate) hash: String,
}

/// The code without separators and in lowercase, if it has the shape of a recovery code.
pub(crate) fn normalise(input: &str) -> Option<Zeroizing<String>> {
    let s: Zeroizing<String> = Zeroizing::new(
        input
            .chars()
            .filter(|c| *c != '-' && !c.is_whitespace())
            .map(|c| c.to_ascii_lowercase())
            .collect(),
    );
    (s.len() == CODE_LEN && s.bytes().all(|b| ALPHABET.contains(&b))).then_some(s)
}

/// Whether `input` has the shape of a recovery code (rather than a 6-digit TOTP code).
pub fn looks_like(input: &str) -> bool {
    normalise(input).is_some()
}

/// Ten new codes with distinct selectors, hashed. CPU-heavy: call from a blocking thread.
pub fn generate() -> Result<Vec<NewCode>, AppError> {
    let mut rng = rand::rngs::OsRng;
    let mut codes: Vec<NewCode> = Vec::with_capacity(COUNT);
    while codes.len() < COUNT {
        let raw: Zeroizing<String> = Zeroizing::new(
            (0..CODE_LEN)
                .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
                .collect(),
        );
        let selector = raw[..SELECTOR_LEN].to_string();
        if codes.iter().any(|c| c.selector == selector) {
            continue;
        }
        let text = Zeroizing::new(format!(
            "{}-{}-{}-{}",
            &raw[0..4],
            &raw[4..8],
            &raw[8..12],
            &raw[12..16]
        ));
        codes.push(NewCode {
            hash: password::hash(raw.as_bytes())?,
            text,
            selector,
        });
    }
    Ok(codes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_well_formed_and_hashed() {
        let codes = generate().unwrap();
        assert_eq!(codes.len(), COUNT);
        for c in &codes {
            assert_eq!(c.text.len(), 19, "{}", c.text.as_str());
            assert!(looks_like(&c.text));
            assert!(c.hash.starts_with("$argon2id$"));
            let bare = normalise(&c.text).unwrap();
            assert!(password::verify(bare.as_bytes(), &c.hash));
            assert_eq!(c.selector, &bare[..4]);
        }
        let mut selectors: Vec<_> = codes.iter().map(|c| c.selector.clone()).collect();
        selectors.dedup();
        selectors.sort();
        selectors.dedup();
        assert_eq!(selectors.len(), COUNT);
    }

    #[test]
    fn shape_check_tells_codes_from_totp_codes() {
        assert!(looks_like("ab12-cd34-ef56-gh78"));
        assert!(looks_like(" AB12 CD34 EF56 GH78 "));
        assert!(!looks_like("123456"));
        assert!(!looks_like("ab12-cd34-ef56-gh7"));
        assert!(
            !looks_like("ab12-cd34-ef56-gh7u"),
            "u is not in the alphabet"
        );
    }
}
