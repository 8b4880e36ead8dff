//! The HTTP layer below the handlers: edge middleware (request ids, headers, limits),
//! error rendering, JSON bodies, redirects and in-memory rate limits. It imports no handler;
//! the app factory and route table are in [`crate::app`].

pub mod config;
pub mod edge;
pub mod json;
pub mod path;
pub mod ratelimit;
pub mod redirect;
pub mod render;
