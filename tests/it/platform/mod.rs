//! The platform under the API and the console: configuration and the command line, TLS,
//! the edge middleware, logs, the database, encryption at rest, development tooling.

mod audit;
mod cli;
pub(crate) mod crypto;
mod database;
mod detect;
mod dev_tokens;
mod edge;
mod fault;
mod instances;
mod layout;
mod logs;
mod metrics;
mod seed;
mod shutdown;
mod tls;
mod tls_scan;
mod webhooks;
