//! `[fhir]`: the FHIR API's settings (owned here; `config` aggregates it), and what the
//! handlers read of them at run time ([`FhirSettings`]).

use serde::Deserialize;

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FhirConfig {
    /// Refuse an update without `If-Match` (428). Off by default: stock clients send
    /// none; an `If-Match` that is sent is always honoured (412 on a stale version).
    pub require_if_match: bool,
}

/// What the FHIR handlers need of the configuration: the absolute base of every URL they
/// answer (`<server.public_url>/fhir`), the update policy and the CORS origins (declared
/// in the CapabilityStatement).
#[derive(Clone, Debug)]
pub struct FhirSettings {
    /// `https://host[:port][/prefix]/fhir`, without a trailing slash.
    pub base: String,
    pub require_if_match: bool,
    pub cors: bool,
}

impl FhirSettings {
    pub fn new(public_url: &str, config: &FhirConfig, cors: bool) -> FhirSettings {
        FhirSettings {
            base: format!("{}/fhir", public_url.trim_end_matches('/')),
            require_if_match: config.require_if_match,
            cors,
        }
    }

    /// The absolute URL of a server path such as `/fhir/Patient/1` (which must start
    /// with `/fhir`).
    pub fn url(&self, path: &str) -> String {
        format!(
            "{}{}",
            self.base,
            path.strip_prefix("/fhir").unwrap_or(path)
        )
    }
}

impl Default for FhirSettings {
    fn default() -> Self {
        FhirSettings::new("https://localhost:8443", &FhirConfig::default(), false)
    }
}
