//! Integration tests: one binary, so the crate is linked once.
// Tests may unwrap and panic: a failed expectation is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod admin_api;
mod audit;
mod auth;
mod common;
mod console_browser;
mod console_emergency;
mod console_login;
mod console_pages;
mod fhir_patient;
mod fhir_resources;
mod platform;
mod routes;
