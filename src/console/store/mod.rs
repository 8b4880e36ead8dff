//! The console's storage: every Diesel query on the console tables (sessions, TOTP,
//! recovery codes, changes waiting for a step-up, emergency accounts and their sign-in
//! attempt limit). Handlers in [`super`] call these inside `Db::run`.

pub mod attempts;
pub mod emergency;
pub mod pending;
pub mod recovery;
pub mod session;
pub mod totp;
