//! The [`Keyring`]: the unwrapped data keys of this process, the active version for new
//! writes, and the blind-index key. Loaded once at start-up, shared behind an `Arc`.

use super::blind::{BlindIndexKey, BlindKind};
use super::envelope::{self, DataKey};
use super::provider::{KeyProvider, LocalKek, decode_key};
use super::sealable::Sealable;
use super::{CryptoError, FieldPlace};
use crate::crypto::config::CryptoConfig;
use crate::schema::data_keys;
use diesel::prelude::*;
use rand::RngCore;
use rand::rngs::OsRng;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, RwLock};
use zeroize::Zeroizing;

pub const STATE_ACTIVE: &str = "active";
pub const STATE_DECRYPT_ONLY: &str = "decrypt_only";
pub const STATE_RETIRED: &str = "retired";

#[derive(Default)]
struct KeySet {
    active: Option<Arc<DataKey>>,
    keys: BTreeMap<i32, Arc<DataKey>>,
}

pub struct Keyring {
    /// `providers[0]` wraps new data keys (`crypto.kek`); the others (`crypto.rotation_kek`)
    /// are only used to unwrap keys already wrapped under them.
    providers: Vec<Arc<dyn KeyProvider>>,
    keys: RwLock<KeySet>,
    blind: BlindIndexKey,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field(
                "kek_ids",
                &self
                    .providers
                    .iter()
                    .map(|p| p.key_id())
                    .collect::<Vec<_>>(),
            )
            .field("active_version", &self.active_version())
            .finish_non_exhaustive()
    }
}

/// Random 256-bit key material from the OS.
pub fn generate_key() -> Zeroizing<[u8; 32]> {
    let mut key = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(key.as_mut());
    key
}

/// The context a data key is wrapped under: binds the wrapped bytes to their version.
pub fn wrap_context(version: i32) -> Vec<u8> {
    format!("data_keys.version={version}").into_bytes()
}

#[derive(Queryable)]
struct StoredKey {
    version: i32,
    wrapped_key: Vec<u8>,
    kek_id: String,
    state: String,
}

impl Keyring {
    /// An empty keyring (no data keys yet); call [`Keyring::load_or_init`].
    pub fn new(
        primary: Arc<dyn KeyProvider>,
        others: Vec<Arc<dyn KeyProvider>>,
        blind: BlindIndexKey,
    ) -> Keyring {
        let mut providers = vec![primary];
        providers.extend(others);
        Keyring {
            providers,
            keys: RwLock::new(KeySet::default()),
            blind,
        }
    }

    /// Builds the providers from configuration. `crypto.kek` and
    /// `crypto.blind_index_key` are required; `crypto.rotation_kek`, when set, may also
    /// unwrap (so instances keep working while a KEK change rolls out).
    pub fn from_config(cfg: &CryptoConfig) -> Result<Keyring, CryptoError> {
        let kek = required(cfg.kek.as_ref().map(|s| s.expose().as_str()), "crypto.kek")?;
        let primary = Arc::new(LocalKek::from_base64("crypto.kek", kek)?);
        let mut others: Vec<Arc<dyn KeyProvider>> = Vec::new();
        if let Some(r) = cfg
            .rotation_kek
            .as_ref()
            .map(|s| s.expose().as_str())
            .filter(|s| !s.trim().is_empty())
        {
            others.push(Arc::new(LocalKek::from_base64("crypto.rotation_kek", r)?));
        }
        let blind = required(
            cfg.blind_index_key.as_ref().map(|s| s.expose().as_str()),
            "crypto.blind_index_key",
        )?;
        let blind = BlindIndexKey::new(decode_key("crypto.blind_index_key", blind)?);
        Ok(Keyring::new(primary, others, blind))
    }

    /// A keyring with one fresh, random, unpersisted data key: for unit tests and
    /// benchmarks only.
    pub fn ephemeral(version: i32) -> Keyring {
        let kr = Keyring::new(
            Arc::new(LocalKek::new("ephemeral", &generate_key())),
            Vec::new(),
            BlindIndexKey::new(generate_key()),
        );
        let key = Arc::new(DataKey::new(version, &generate_key()));
        let mut set = kr.write_keys();
        set.keys.insert(version, key.clone());
        set.active = Some(key);
        drop(set);
        kr
    }

    /// The configured provider whose key id is `kek_id`, if any.
    pub fn provider(&self, kek_id: &str) -> Option<&Arc<dyn KeyProvider>> {
        self.providers.iter().find(|p| p.key_id() == kek_id)
    }

    pub fn primary_provider(&self) -> &Arc<dyn KeyProvider> {
        &self.providers[0]
    }

    fn read_keys(&self) -> std::sync::RwLockReadGuard<'_, KeySet> {
        self.keys.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_keys(&self) -> std::sync::RwLockWriteGuard<'_, KeySet> {
        self.keys.write().unwrap_or_else(|e| e.into_inner())
    }

    /// First start: creates data key version 1 when the store is empty. Then loads.
    pub fn load_or_init(&self, conn: &mut PgConnection) -> Result<(), CryptoError> {
        let count: i64 = data_keys::table.count().get_result(conn)?;
        if count == 0 {
            let key = generate_key();
            let wrapped = self.providers[0].wrap_key(&key, &wrap_context(1))?;
            diesel::insert_into(data_keys::table)
                .values((
                    data_keys::version.eq(1),
                    data_keys::wrapped_key.eq(wrapped),
                    data_keys::kek_id.eq(self.providers[0].key_id()),
                    data_keys::state.eq(STATE_ACTIVE),
                    data_keys::activated_at.eq(diesel::dsl::now),
                ))
                .on_conflict_do_nothing()
                .execute(conn)?;
        }
        self.refresh(conn)
    }

    /// Reloads every data key that is not retired. A key wrapped under a KEK we do not
    /// hold is a configuration error naming `crypto.kek`.
    pub fn refresh(&self, conn: &mut PgConnection) -> Result<(), CryptoError> {
        let rows: Vec<StoredKey> = data_keys::table
            .filter(data_keys::state.ne(STATE_RETIRED))
            .select((
                data_keys::version,
                data_keys::wrapped_key,
                data_keys::kek_id,
                data_keys::state,
            ))
            .order(data_keys::version)
            .load(conn)?;
        let mut set = KeySet::default();
        for row in rows {
            let known = self.read_keys().keys.get(&row.version).cloned();
            let key = match known {
                Some(k) => k,
                None => Arc::new(self.unwrap_stored(&row)?),
            };
            if row.state == STATE_ACTIVE {
                set.active = Some(key.clone());
            }
            set.keys.insert(row.version, key);
        }
        *self.write_keys() = set;
        Ok(())
    }

    fn unwrap_stored(&self, row: &StoredKey) -> Result<DataKey, CryptoError> {
        let Some(provider) = self.providers.iter().find(|p| p.key_id() == row.kek_id) else {
            return Err(CryptoError::Config {
                setting: "crypto.kek",
                problem: format!(
                    "is not the key-encryption key that wrapped data key version {} (stored KEK id {}, configured {}); supply the right key, or crypto.rotation_kek during a KEK change",
                    row.version,
                    row.kek_id,
                    self.providers
                        .iter()
                        .map(|p| p.key_id())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        };
        let key = provider
            .unwrap_key(&row.wrapped_key, &wrap_context(row.version))
            .map_err(|_| CryptoError::Config {
                setting: if provider.source() == "crypto.rotation_kek" {
                    "crypto.rotation_kek"
                } else {
                    "crypto.kek"
                },
                problem: format!(
                    "cannot unwrap data key version {} (wrong key or tampered key store)",
                    row.version
                ),
            })?;
        Ok(DataKey::new(row.version, &key))
    }

    /// The in-memory active version (new writes), if any.
    pub fn active_version(&self) -> Option<i32> {
        self.read_keys().active.as_ref().map(|k| k.version())
    }

    /// Data-key versions held in memory.
    pub fn loaded_versions(&self) -> Vec<i32> {
        self.read_keys().keys.keys().copied().collect()
    }

    /// A sealer for the active key held in memory. Writers inside a transaction should
    /// prefer [`Keyring::sealer_for_write`], which cannot use a key a rotation retired.
    pub fn sealer(&self) -> Result<Sealer, CryptoError> {
        self.read_keys()
            .active
            .clone()
            .map(|key| Sealer { key })
            .ok_or(CryptoError::NoActiveKey)
    }

    /// Inside the caller's transaction: share-locks the active `data_keys` row (so a
    /// rotation switching keys waits for this write to commit) and returns a sealer for
    /// that version, reloading the keyring if another process rotated.
    pub fn sealer_for_write(&self, conn: &mut PgConnection) -> Result<Sealer, CryptoError> {
        let version: Option<i32> = data_keys::table
            .filter(data_keys::state.eq(STATE_ACTIVE))
            .select(data_keys::version)
            .for_share()
            .first(conn)
            .optional()?;
        let version = version.ok_or(CryptoError::NoActiveKey)?;
        if self.active_version() != Some(version) {
            self.refresh(conn)?;
        }
        let sealer = self.sealer()?;
        if sealer.version() != version {
            return Err(CryptoError::NoActiveKey);
        }
        Ok(sealer)
    }

    /// Makes sure `version` is loaded (reloading once from the store if another process
    /// added it). Call before opening a row sealed with `version`.
    pub fn ensure_version(&self, conn: &mut PgConnection, version: i32) -> Result<(), CryptoError> {
        if self.read_keys().keys.contains_key(&version) {
            return Ok(());
        }
        self.refresh(conn)
    }

    /// Seals with the in-memory active key.
    pub fn seal(&self, place: &FieldPlace, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.sealer()?.seal(place, plaintext)
    }

    /// Opens a value with the key version written in its header.
    pub fn open(
        &self,
        place: &FieldPlace,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let header = envelope::parse_header(place, sealed)?;
        let key = i32::try_from(header.key_version)
            .ok()
            .and_then(|v| self.read_keys().keys.get(&v).cloned())
            .ok_or(CryptoError::UnknownKeyVersion {
                table: place.table,
                column: place.column,
                row: place.row,
                version: header.key_version,
            })?;
        key.open(place, sealed)
    }

    pub fn open_value<T: Sealable>(
        &self,
        place: &FieldPlace,
        sealed: &[u8],
    ) -> Result<T, CryptoError> {
        let bytes = self.open(place, sealed)?;
        T::decode(&bytes).ok_or(CryptoError::Decode {
            table: place.table,
            column: place.column,
            row: place.row,
            expected: T::KIND,
        })
    }

    pub fn seal_value<T: Sealable>(
        &self,
        place: &FieldPlace,
        value: &T,
    ) -> Result<Vec<u8>, CryptoError> {
        self.seal(place, &value.encode())
    }

    pub fn seal_str(&self, place: &FieldPlace, value: &str) -> Result<Vec<u8>, CryptoError> {
        self.seal(place, value.as_bytes())
    }

    pub fn open_str(&self, place: &FieldPlace, sealed: &[u8]) -> Result<String, CryptoError> {
        self.open_value::<String>(place, sealed)
    }

    /// The blind index of `raw` (normalised for `kind` first).
    pub fn blind_index(&self, kind: BlindKind, raw: &str) -> Result<Vec<u8>, CryptoError> {
        self.blind.index(kind, raw)
    }

    /// The starts-with indexes a patient row stores for its names.
    pub fn name_prefixes(&self, family: &str, given: &str) -> Vec<Vec<u8>> {
        self.blind.name_prefixes(family, given)
    }

    /// The index a starts-with search of a name tests.
    pub fn prefix_query(&self, kind: BlindKind, raw: &str) -> Result<Vec<u8>, super::PrefixError> {
        self.blind.prefix_query(kind, raw)
    }

    /// The `:contains` indexes a patient row stores for its names.
    pub fn name_infixes(&self, family: &str, given: &str) -> Vec<Vec<u8>> {
        self.blind.name_infixes(family, given)
    }

    /// The index a `:contains` search of a name tests.
    pub fn infix_query(&self, kind: BlindKind, raw: &str) -> Result<Vec<u8>, super::InfixError> {
        self.blind.infix_query(kind, raw)
    }
}

fn required<'a>(value: Option<&'a str>, setting: &'static str) -> Result<&'a str, CryptoError> {
    match value {
        Some(v) if !v.trim().is_empty() => Ok(v),
        _ => Err(CryptoError::Config {
            setting,
            problem: "is required (32 random bytes, base64: `head -c32 /dev/urandom | base64`)"
                .into(),
        }),
    }
}

/// Seals with one fixed data-key version (returned by [`Sealer::version`]; store it in
/// the row's `key_version`).
#[derive(Clone, Debug)]
pub struct Sealer {
    key: Arc<DataKey>,
}

impl Sealer {
    pub fn version(&self) -> i32 {
        self.key.version()
    }

    pub fn seal(&self, place: &FieldPlace, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.key.seal(place, plaintext)
    }

    pub fn seal_value<T: Sealable>(
        &self,
        place: &FieldPlace,
        value: &T,
    ) -> Result<Vec<u8>, CryptoError> {
        self.key.seal(place, &value.encode())
    }

    pub fn seal_str(&self, place: &FieldPlace, value: &str) -> Result<Vec<u8>, CryptoError> {
        self.key.seal(place, value.as_bytes())
    }
}
