//! Development TOTP: the demo console people (admin.demo, po.demo and the emergency
//! account emergency.demo) are enrolled by `custodian dev` with secrets derived from a
//! dev key in `.custodian/dev/keys/` (HMAC-SHA256 of the account name), so that
//! `custodian dev-totp <person>` and the dev sign-in page can show the current code.
//! Nothing here reads the database: it knows only the secrets it derived, never a
//! secret someone enrolled with an authenticator app, so it is no way around a real
//! second factor.

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// The demo people `custodian dev` pre-enrols (the emergency account's name last).
pub const PRE_ENROLLED: [&str; 3] = ["admin.demo", "po.demo", EMERGENCY_ACCOUNT];
/// The development emergency account (`/console/emergency`).
pub const EMERGENCY_ACCOUNT: &str = "emergency.demo";
const KEY_FILE: &str = "dev-totp-key";
/// The emergency account's password, generated once next to the other dev keys.
pub const EMERGENCY_PASSWORD_FILE: &str = "emergency.demo.password";

/// The key the development TOTP secrets are derived from.
pub struct DevTotpKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for DevTotpKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DevTotpKey([redacted])")
    }
}

fn key_path(keys_dir: &Path) -> PathBuf {
    keys_dir.join(KEY_FILE)
}

impl DevTotpKey {
    /// Creates the key (file 0600) on first use; loads it afterwards.
    pub fn ensure(keys_dir: &Path) -> anyhow::Result<DevTotpKey> {
        let path = key_path(keys_dir);
        if !path.is_file() {
            use rand::RngCore;
            std::fs::create_dir_all(keys_dir)?;
            let mut seed = Zeroizing::new([0u8; 32]);
            rand::rngs::OsRng.fill_bytes(seed.as_mut());
            let encoded = Zeroizing::new(STANDARD.encode(seed.as_ref()));
            super::write_private(&path, format!("{}\n", encoded.as_str()).as_bytes())?;
        }
        Self::load(keys_dir)
    }

    /// Loads the key; refuses when `custodian dev` has not created it.
    pub fn load(keys_dir: &Path) -> anyhow::Result<DevTotpKey> {
        let path = key_path(keys_dir);
        if !path.is_file() {
            bail!(
                "no development TOTP key at {}: run `custodian dev` first (development codes exist only for local development)",
                path.display()
            );
        }
        let text = Zeroizing::new(
            std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?,
        );
        let bytes = Zeroizing::new(
            STANDARD
                .decode(text.trim())
                .with_context(|| format!("{} is not base64", path.display()))?,
        );
        let key: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .with_context(|| format!("{} must hold 32 bytes", path.display()))?;
        Ok(DevTotpKey(Zeroizing::new(key)))
    }

    /// The 160-bit TOTP secret of `account`.
    pub fn secret(&self, account: &str) -> anyhow::Result<Zeroizing<Vec<u8>>> {
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(self.0.as_ref())
            .map_err(|_| anyhow::anyhow!("development TOTP key"))?;
        mac.update(b"custodian dev totp\0");
        mac.update(account.as_bytes());
        Ok(Zeroizing::new(mac.finalize().into_bytes()[..20].to_vec()))
    }

    /// The current code of `account` and the seconds it stays current.
    pub fn code_now(&self, account: &str) -> anyhow::Result<(String, u64)> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.code_at(account, now)
    }

    fn code_at(&self, account: &str, now: u64) -> anyhow::Result<(String, u64)> {
        use crate::console::totp::STEP_SECS;
        let secret = self.secret(account)?;
        let totp = crate::console::totp::totp(&secret)
            .map_err(|_| anyhow::anyhow!("invalid development TOTP secret"))?;
        Ok((totp.generate(now).to_string(), STEP_SECS - now % STEP_SECS))
    }
}

/// `custodian dev-totp <person>`: prints the person's current development code on stdout
/// (and what it is on stderr).
pub fn run(keys_dir: &Path, account: &str) -> anyhow::Result<()> {
    use std::io::Write;
    if !PRE_ENROLLED.contains(&account) {
        bail!(
            "{account:?} has no development TOTP secret: only {} are pre-enrolled by `custodian dev`",
            PRE_ENROLLED.join(", ")
        );
    }
    let key = DevTotpKey::load(keys_dir)?;
    let (code, left) = key.code_now(account)?;
    let _ = writeln!(
        std::io::stderr(),
        "DEVELOPMENT TOTP code for {account}, current for {left} more s (each code is accepted once; a new one every 30 s)."
    );
    writeln!(std::io::stdout(), "{code}")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_per_account_stable_and_match_the_console_check() {
        let dir = tempfile::tempdir().unwrap();
        assert!(DevTotpKey::load(dir.path()).is_err());
        let a = DevTotpKey::ensure(dir.path()).unwrap();
        let b = DevTotpKey::ensure(dir.path()).unwrap();
        let secret = |k: &DevTotpKey, who| k.secret(who).unwrap().to_vec();
        assert_eq!(secret(&a, "admin.demo"), secret(&b, "admin.demo"));
        assert_ne!(secret(&a, "admin.demo"), secret(&a, "po.demo"));
        assert_eq!(secret(&a, "po.demo").len(), 20);
        let (code, left) = a.code_at("admin.demo", 1_000_000).unwrap();
        assert_eq!(left, 30 - 1_000_000 % 30);
        let step =
            crate::console::totp::matching_step(&secret(&a, "admin.demo"), &code, 1_000_000, None)
                .unwrap();
        assert_eq!(step, Some(1_000_000 / 30));
        assert_eq!(format!("{a:?}"), "DevTotpKey([redacted])");
        assert!(run(dir.path(), "dr.demo").is_err(), "not pre-enrolled");
    }
}
