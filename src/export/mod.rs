//! Bulk Data `$export` (docs/export.md): durable jobs in PostgreSQL
//! ([`crate::db::export_jobs`]), the kick-off, status, cancel and download routes
//! ([`api`]), the background runner that streams each permitted type to an NDJSON file
//! ([`runner`], [`source`]), the files and their short-lived links ([`files`]).
//! De-identification is [`crate::deid`]'s; who may export what is
//! [`crate::policy::export`]'s.

pub mod api;
pub mod config;
pub mod files;
pub mod request;
pub mod runner;
pub mod source;

pub use config::ExportConfig;
