//! Password-like secrets (emergency-account passwords, console recovery codes): argon2id
//! with the library defaults (RFC 9106 / OWASP: m = 19 MiB, t = 2, p = 1) and a random
//! salt, stored as PHC strings. Hashing and verifying are CPU-heavy: call them from
//! blocking threads (`web::block`, `state.db.run`), never on the async executor.

use crate::error::AppError;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

fn argon2() -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::default())
}

/// The PHC string (`$argon2id$v=19$m=19456,t=2,p=1$…`) of `secret` with a fresh salt.
pub fn hash(secret: &[u8]) -> Result<String, AppError> {
    let salt = SaltString::generate(&mut OsRng);
    argon2()
        .hash_password(secret, &salt)
        .map(|h| h.to_string())
        .map_err(|_| AppError::internal("argon2id hashing failed"))
}

/// Whether `secret` matches `phc`. A malformed stored hash never matches. The parameters
/// come from the stored string, so hashes made with older parameters keep working.
pub fn verify(secret: &[u8], phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| argon2().verify_password(secret, &h).is_ok())
}

/// The argon2id hash (current parameters) of a random secret that was thrown away:
/// verifying against it costs what verifying a real hash costs, so an unknown account
/// name takes the same path and time as a wrong password.
pub const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$6WmlPHUj+HugLssDMWQVwg$5In2FypdasQfcZ2ysxwo1Hc7wyBxRNAtS5Z4RSRGQ9g";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argon2id_hash_verifies_only_the_same_secret() {
        let h = hash(b"correct horse battery staple").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify(b"correct horse battery staple", &h));
        assert!(!verify(b"correct horse battery stapl", &h));
        assert_ne!(hash(b"correct horse battery staple").unwrap(), h, "salted");
        assert!(!verify(b"x", "not a hash"));
        assert!(!verify(b"x", DUMMY_HASH));
    }

    #[test]
    fn dummy_hash_has_the_cost_of_a_real_one() {
        let params = |phc: &str| {
            let h = PasswordHash::new(phc).unwrap();
            (
                h.algorithm.to_string(),
                h.params.to_string(),
                h.hash.map(|o| o.len()),
            )
        };
        assert_eq!(params(DUMMY_HASH), params(&hash(b"anything").unwrap()));
    }

    #[test]
    #[ignore = "prints a fresh value for DUMMY_HASH"]
    fn print_dummy_hash() {
        let mut secret = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut secret);
        println!("{}", hash(&secret).unwrap());
    }
}
