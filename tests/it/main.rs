//! Integration tests: one binary, so the crate is linked once.
// Tests may unwrap and panic: a failed expectation is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod admin_api;
mod audit;
mod auth;
mod cli;
mod common;
mod console_browser;
mod console_emergency;
mod console_login;
mod console_pages;
mod crypto;
mod database;
mod dev_tokens;
mod edge;
mod fhir_patient;
mod fhir_resources;
mod logs;
mod routes;
mod seed;
mod tls;
