//! Administration: ONE typed set of operations ([`op::Op`]) with their audit action,
//! step-up need, validation and reason rule, used by every administrative surface — the
//! JSON API under `/api/admin` ([`api`]), the console pages (`crate::console::pages`) and
//! the `custodian admin` CLI (`crate::cli::admin`). The role rules they follow are in
//! [`crate::policy::admin`].

pub mod api;
pub mod op;

pub use op::{
    AdminActor, Done, Op, Performed, REASON_MAX, REASON_MIN, ReasonRule, Touched, audited,
    check_reason,
};

/// Page size of `GET /api/admin/users`.
pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 200;
