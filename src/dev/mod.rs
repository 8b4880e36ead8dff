//! Development tooling, never used by `custodian serve`: the dev folder, development
//! tokens and their JWKS, synthetic data, and a private PostgreSQL cluster. The
//! `custodian dev` command that ties them together is [`crate::cli::dev`].

pub mod pgcluster;
pub mod seed;
pub mod token;

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
