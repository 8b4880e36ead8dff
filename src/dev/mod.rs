//! Development tooling, never used by `custodian serve`: the dev folder, development
//! tokens and their JWKS, the development sign-in provider and TOTP secrets, synthetic
//! data, and a private PostgreSQL cluster. The
//! `custodian dev` command that ties them together is [`crate::cli::dev`].

pub mod history;
pub mod idp;
pub mod pgcluster;
pub mod seed;
pub mod token;
pub mod totp;

use anyhow::Context;
use std::path::{Path, PathBuf};

/// The effective configuration `custodian dev` writes into its folder, for the other
/// commands run there (see [`crate::cli`]).
pub const CONFIG_FILE: &str = "custodian.toml";

/// Where `custodian dev` keeps its cluster, certificate and keys.
pub fn dev_dir() -> PathBuf {
    std::env::var_os("CUSTODIAN_DEV_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".custodian/dev"))
}

/// Writes a file readable by its owner only.
pub fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(bytes)?;
    Ok(())
}

/// `word` as one shell word: unchanged when it needs no quoting, else single-quoted (the
/// commands `custodian dev` prints run as printed).
pub fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:@".contains(&b));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// This binary as one shell word (for printed commands: someone who followed the README
/// has no `custodian` on PATH).
pub fn me() -> String {
    shell_word(
        &std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "custodian".into()),
    )
}

#[cfg(test)]
mod tests {
    use super::shell_word;

    #[test]
    fn printed_paths_are_one_shell_word() {
        assert_eq!(
            shell_word("/work/target/release/custodian"),
            "/work/target/release/custodian"
        );
        assert_eq!(shell_word("/my work/custodian"), "'/my work/custodian'");
        assert_eq!(shell_word("/it's/custodian"), "'/it'\\''s/custodian'");
    }
}
