//! Console recovery codes: ten single-use codes shown once after TOTP enrolment, each
//! accepted once in place of a TOTP code. Only argon2id hashes are stored.
//!
//! A code reads `ssss-xxxx-xxxx-xxxx` (lowercase Crockford base32): the first group is a
//! selector that finds the one stored row to verify (so a guess costs one argon2
//! verification), the other twelve characters are the 60-bit secret. Guessing is further
//! bounded by the TOTP lock-out, which counts wrong recovery codes too.

use crate::crypto::password;
use crate::db::schema::console_recovery_codes as rc;
use crate::error::AppError;
use chrono::Utc;
use diesel::prelude::*;
use rand::Rng;
use uuid::Uuid;
use zeroize::Zeroizing;

pub const COUNT: usize = 10;
const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
const SELECTOR_LEN: usize = 4;
const CODE_LEN: usize = 16;

/// A freshly generated code: its text (shown once) and what is stored.
pub struct NewCode {
    pub text: Zeroizing<String>,
    selector: String,
    hash: String,
}

/// The code without separators and in lowercase, if it has the shape of a recovery code.
fn normalise(input: &str) -> Option<Zeroizing<String>> {
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

/// Replaces the user's codes with `codes` (earlier codes, used or not, stop working).
pub fn replace(conn: &mut PgConnection, user_id: Uuid, codes: &[NewCode]) -> Result<(), AppError> {
    conn.transaction(|conn| {
        diesel::delete(rc::table.filter(rc::user_id.eq(user_id))).execute(conn)?;
        for c in codes {
            diesel::insert_into(rc::table)
                .values((
                    rc::id.eq(Uuid::new_v4()),
                    rc::user_id.eq(user_id),
                    rc::selector.eq(&c.selector),
                    rc::code_hash.eq(&c.hash),
                ))
                .execute(conn)?;
        }
        Ok(())
    })
}

/// Uses up the user's code `input` if it is one of their unused codes. Runs one argon2
/// verification (none when no code has that selector).
pub fn redeem(conn: &mut PgConnection, user_id: Uuid, input: &str) -> Result<bool, AppError> {
    let Some(code) = normalise(input) else {
        return Ok(false);
    };
    let row: Option<(Uuid, String)> = rc::table
        .filter(
            rc::user_id
                .eq(user_id)
                .and(rc::selector.eq(&code[..SELECTOR_LEN]))
                .and(rc::used_at.is_null()),
        )
        .select((rc::id, rc::code_hash))
        .first(conn)
        .optional()?;
    let Some((id, hash)) = row else {
        return Ok(false);
    };
    if !password::verify(code.as_bytes(), &hash) {
        return Ok(false);
    }
    // Single use even against a concurrent request with the same code.
    let used = diesel::update(rc::table.filter(rc::id.eq(id).and(rc::used_at.is_null())))
        .set(rc::used_at.eq(Some(Utc::now())))
        .execute(conn)?;
    Ok(used == 1)
}

/// How many unused codes the user has left.
pub fn remaining(conn: &mut PgConnection, user_id: Uuid) -> Result<i64, AppError> {
    Ok(rc::table
        .filter(rc::user_id.eq(user_id).and(rc::used_at.is_null()))
        .count()
        .get_result(conn)?)
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
