//! The audit trail: THE one path by which the product records who did what to which
//! patient's data, when, from where, why and with what outcome.
//!
//! - [`event`]: the typed [`AuditEvent`] (no free text, so no PHI) and its canonical
//!   encoding.
//! - [`chain`]: the HMAC-SHA256 hash chain and Ed25519-signed checkpoints.
//! - [`store`]: the append-only tables (one chain for the whole deployment, serialised
//!   on the chain-head row).
//! - [`writer`]: the group-commit [`AuditWriter`] each instance runs.
//! - [`context`]: [`AuditContext`], where a request came from (request id, address, agent).
//! - [`flood`]: rate-limited refusals aggregated per source and window, so that a flood
//!   cannot flood the trail.
//! - [`recorder`]: [`Recorder`], the one way a request, console session or command
//!   records its events (`permit` / `deny` / `error` / `commit_with`).
//! - [`verify`] and [`ops`]: `custodian audit verify | export`; [`selection`]: verified
//!   exports of a filtered set of events (console), checked by the same `verify --file`.

pub mod chain;
pub mod checks;
pub mod config;
pub mod context;
pub mod event;
pub mod flood;
pub mod ops;
pub mod recorder;
pub mod search;
pub mod selection;
pub mod store;
pub mod verify;
pub mod writer;

pub use chain::{ChainKey, Checkpoint, CheckpointSigner};
pub use context::{AuditContext, EventBuilder};
pub use event::{
    Actor, AuditAction, AuditEvent, AuthMethod, ClientId, DenyReason, Outcome, PurposeOfUse,
    ResourceType, RoleCode, UserAgent,
};
pub use recorder::{Recorder, What};
pub use writer::{AuditWriter, WriteJob, WriterSettings};
