//! Custodian: a service that keeps protected health information safe and still easy to
//! use. The binary in `main.rs` only parses the command line and calls [`cli::run`].

pub mod access;
pub mod admin;
pub mod app;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod config;
pub mod console;
pub mod crypto;
pub mod db;
pub mod deid;
pub mod detect;
pub mod dev;
pub mod domain;
pub mod error;
pub mod export;
pub mod fhir;
pub mod health;
pub mod monitoring;
pub mod policy;
pub mod schema;
pub mod secret;
pub mod state;
pub mod telemetry;
pub mod tls;
pub mod web;
pub mod webhooks;
