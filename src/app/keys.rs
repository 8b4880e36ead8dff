//! Opens the keyring at start-up: keys from configuration, data keys from the database's
//! key store (created on first start). Here, in the composition root, because it joins
//! configuration, storage and crypto; `crypto` itself never opens a connection.

use crate::crypto::{self, Keyring};

/// Builds the keyring from configuration and loads (on first start: creates) the data
/// keys. Blocking; a configuration problem names its setting (`crypto.kek`, ...).
pub fn load_keyring(
    cfg: &crypto::config::CryptoConfig,
    database_url: &str,
    connect_timeout_secs: u64,
) -> anyhow::Result<Keyring> {
    use anyhow::Context;
    use diesel::Connection;
    let keyring = Keyring::from_config(cfg).map_err(config_error)?;
    let mut conn = diesel::PgConnection::establish(&crate::db::with_connect_timeout(
        database_url,
        connect_timeout_secs,
    ))
    .context("database.url: cannot connect to PostgreSQL")?;
    keyring.load_or_init(&mut conn).map_err(config_error)?;
    // Break-glass justifications and review notes written before they were sealed.
    let sealed = crate::db::break_glass::seal_clear_text(&mut conn, &keyring)
        .map_err(|_| anyhow::anyhow!("cannot seal the break-glass text stored in clear"))?;
    if sealed > 0 {
        tracing::info!(sealed, "sealed break-glass text stored in clear");
    }
    Ok(keyring)
}

/// Turns a key configuration problem into the usual configuration error.
pub fn config_error(e: crypto::CryptoError) -> anyhow::Error {
    match e {
        crypto::CryptoError::Config { setting, problem } => {
            crate::error::ConfigError::new(setting, problem).into()
        }
        crypto::CryptoError::Database(db) => {
            anyhow::Error::new(db).context("cannot read the data-key store (data_keys)")
        }
        other => other.into(),
    }
}
