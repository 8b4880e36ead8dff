//! Integration tests: one binary, so the crate is linked once. Organised like the product:
//! `api/` (FHIR and administration API), `console/`, `platform/` (command line, TLS, edge,
//! database, encryption, audit trail, logs, layout), and `support/` (the shared harness).
// Tests may unwrap and panic: a failed expectation is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod api;
mod console;
mod platform;
mod properties;
mod support;
