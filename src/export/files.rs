//! The output files and their links.
//!
//! - A job's files are `<export.dir>/<job id>/<n>-<Type>.ndjson`, one per resource type.
//! - **De-identified** files hold the de-identified resources as plain NDJSON (no PHI by
//!   construction: the rules engine keeps only what a Safe Harbor rule vetted).
//! - **Identified** files are sealed at rest: each line is the resource's JSON sealed with
//!   the envelope crypto (AES-256-GCM under the active data key, AAD bound to the job, the
//!   type and the line number), base64-encoded. A download opens them line by line; the
//!   file on disk, a backup of it or a stray copy is ciphertext.
//! - A download link is the job, the file and an expiry sealed for the requester
//!   (`crypto::columns::export_link`): nobody else's link opens, and nothing in it is
//!   readable or forgeable.

use crate::crypto::{Keyring, columns};
use crate::domain::UserId;
use crate::error::AppError;
use crate::policy::ResourceType;
use base64::Engine;
use chrono::{DateTime, Utc};
use std::path::{Path, PathBuf};
use uuid::Uuid;

/// The directory of job `id`.
pub fn job_dir(root: &Path, id: Uuid) -> PathBuf {
    root.join(id.to_string())
}

/// The file of part `n` (type `kind`) of job `id`.
pub fn part_file(root: &Path, id: Uuid, n: usize, kind: ResourceType) -> PathBuf {
    job_dir(root, id).join(format!("{n}-{}.ndjson", kind.as_str()))
}

/// Removes a job's directory (a missing one is fine).
pub fn remove_job(root: &Path, id: Uuid) -> Result<(), AppError> {
    match std::fs::remove_dir_all(job_dir(root, id)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(_) => Err(AppError::internal("cannot remove an export directory")),
    }
}

/// One identified line, sealed: `base64(seal(json))` for line `line` of the part.
pub fn seal_line(
    kr: &Keyring,
    kind: ResourceType,
    job: Uuid,
    line: u64,
    json: &[u8],
) -> Result<String, AppError> {
    let sealed = kr.seal(&columns::export_line(kind.as_str(), job, line), json)?;
    Ok(base64::engine::general_purpose::STANDARD.encode(sealed))
}

/// Opens line `line` of an identified part.
pub fn open_line(
    kr: &Keyring,
    kind: ResourceType,
    job: Uuid,
    line: u64,
    text: &str,
) -> Result<zeroize::Zeroizing<Vec<u8>>, AppError> {
    let sealed = base64::engine::general_purpose::STANDARD
        .decode(text.trim_end())
        .map_err(|_| AppError::internal("export file line is not base64"))?;
    Ok(kr.open(&columns::export_line(kind.as_str(), job, line), &sealed)?)
}

/// What a download link names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    pub job: Uuid,
    pub part: u8,
    pub expires: DateTime<Utc>,
}

const MAX_LINK: usize = 256;

impl Link {
    /// The link's token, sealed for `user`.
    pub fn seal(&self, kr: &Keyring, user: UserId) -> Result<String, AppError> {
        let mut plain = self.job.as_bytes().to_vec();
        plain.push(self.part);
        plain.extend_from_slice(&self.expires.timestamp().to_be_bytes());
        let sealed = kr.seal(&columns::export_link(user), &plain)?;
        Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sealed))
    }

    /// The link a token names, if it was sealed for `user` (anything else is `None`).
    pub fn open(kr: &Keyring, user: UserId, token: &str) -> Option<Link> {
        if token.len() > MAX_LINK {
            return None;
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .ok()?;
        let plain = kr.open(&columns::export_link(user), &bytes).ok()?;
        if plain.len() != 16 + 1 + 8 {
            return None;
        }
        let job = Uuid::from_slice(&plain[..16]).ok()?;
        let part = plain[16];
        let secs = i64::from_be_bytes(plain[17..25].try_into().ok()?);
        Some(Link {
            job,
            part,
            expires: DateTime::from_timestamp(secs, 0)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_open_only_for_their_user_and_lines_only_in_their_place() {
        let kr = Keyring::ephemeral(1);
        let (a, b) = (UserId::new(), UserId::new());
        let link = Link {
            job: Uuid::new_v4(),
            part: 2,
            expires: DateTime::from_timestamp(1_900_000_000, 0).unwrap(),
        };
        let token = link.seal(&kr, a).unwrap();
        assert_eq!(Link::open(&kr, a, &token), Some(link));
        assert_eq!(Link::open(&kr, b, &token), None, "another user's link");
        assert_eq!(Link::open(&kr, a, "garbage"), None);
        let job = Uuid::new_v4();
        let line = seal_line(&kr, ResourceType::Patient, job, 7, b"{\"x\":1}").unwrap();
        assert!(!line.contains("x\":1"));
        assert_eq!(
            &open_line(&kr, ResourceType::Patient, job, 7, &line).unwrap()[..],
            b"{\"x\":1}"
        );
        assert!(open_line(&kr, ResourceType::Patient, job, 8, &line).is_err());
        assert!(open_line(&kr, ResourceType::Claim, job, 7, &line).is_err());
    }
}
