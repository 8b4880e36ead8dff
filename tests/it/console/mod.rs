//! The admin console: sign-in against a real OpenID provider, pages, emergency accounts,
//! and the browser tests in Chromium.

mod browser;
mod cases;
pub(crate) mod dev_tour;
mod emergency;
mod login;
mod pages;
mod reidentify;
mod review;
