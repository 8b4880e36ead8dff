//! The API end to end: FHIR resources, the administration API, bearer tokens, and the walk
//! over every route of the table.

mod access_report;
mod admin;
mod attribution;
mod audit_event;
mod auth;
mod break_glass;
mod export;
mod export_cli;
pub(crate) mod interop;
mod name_search;
mod patient;
mod py_clients;
pub(crate) mod resources;
mod revinclude;
mod routes;
mod separation;
mod smart_launch;
mod sorting;
mod strict_input;
mod write_control;
