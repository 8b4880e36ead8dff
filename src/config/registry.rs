//! The settings registry: every configuration key once, with its kind, default and
//! meaning. It drives the environment overlay, `*_FILE` secrets, the rejection of unknown
//! keys and the generated settings table in the documentation.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Str,
    Int,
    Bool,
    List,
    /// A string that may also come from `<NAME>_FILE`; never printed.
    Secret,
}

/// One documented setting.
pub struct Setting {
    pub key: &'static str,
    pub kind: Kind,
    pub default: &'static str,
    pub doc: &'static str,
}

impl Setting {
    pub fn env_name(&self) -> String {
        format!("CUSTODIAN_{}", self.key.replace('.', "_").to_uppercase())
    }
}

macro_rules! settings {
    ($( $key:literal, $kind:ident, $default:literal, $doc:literal; )*) => {
        /// Every configuration key, its kind, default and meaning.
        pub const SETTINGS: &[Setting] = &[
            $( Setting { key: $key, kind: Kind::$kind, default: $default, doc: $doc }, )*
        ];
    };
}

settings! {
    "server.listen", Str, "0.0.0.0:8443", "HTTPS listen address";
    "server.http_redirect_listen", Str, "", "Optional plain-HTTP listener that redirects console paths to HTTPS and refuses API paths";
    "server.public_url", Str, "https://localhost:8443", "External HTTPS base URL (a path prefix is kept), used for redirects and for every absolute URL of the FHIR API: Bundle fullUrl and links, Location, Content-Location";
    "server.workers", Int, "0", "HTTP worker threads (0 = one per core)";
    "server.body_limit_bytes", Int, "1048576", "Largest accepted request body (413 above it)";
    "server.json_max_depth", Int, "32", "Deepest accepted JSON nesting (400 above it)";
    "server.cors_allowed_origins", List, "[]", "Origins allowed to call the API from a browser (exact match); empty = CORS closed";
    "server.shutdown_timeout_secs", Int, "30", "Grace period for in-flight requests on SIGINT/SIGTERM";
    "fhir.require_if_match", Bool, "false", "FHIR updates: refuse an update without If-Match (428); an If-Match that is sent is always honoured (412 when stale)";
    "tls.cert_file", Str, "", "PEM certificate chain (leaf first); required";
    "tls.key_file", Str, "", "PEM private key for the certificate; required";
    "tls.client_auth", Str, "off", "Client certificates: off | optional | required";
    "tls.client_identities", List, "[]", "Service principals authenticated by client certificate: entries `<SHA-256 of the certificate, hex>=<client id>`; such a client needs no bearer token and gets the roles of the service user (issuer `mtls`, subject = client id)";
    "tls.client_ca_file", Str, "", "PEM bundle of CAs trusted for client certificates (required unless client_auth = off)";
    "database.url", Secret, "", "PostgreSQL URL (also read from DATABASE_URL); required";
    "database.pool_size", Int, "16", "Connections per instance";
    "database.acquire_timeout_ms", Int, "2000", "Longest wait for a pooled connection before answering 503";
    "database.connect_timeout_secs", Int, "5", "Longest wait to open a new connection";
    "database.statement_timeout_ms", Int, "10000", "PostgreSQL statement_timeout for application queries";
    "database.migrate_on_start", Bool, "true", "Run pending migrations (under an advisory lock) when serving starts";
    "ratelimit.per_address_per_minute", Int, "6000", "Requests per minute from one source address (0 = off); health probes are exempt";
    "ratelimit.per_address_burst", Int, "500", "Burst allowance per source address";
    "ratelimit.per_principal_per_minute", Int, "1200", "Requests per minute per authenticated principal (0 = off)";
    "ratelimit.per_principal_burst", Int, "200", "Burst allowance per principal";
    "log.filter", Str, "info", "Log filter in RUST_LOG syntax (RUST_LOG overrides it)";
    "log.format", Str, "json", "json (one JSON object per line) | text";
    "metrics.listen", Str, "", "Prometheus metrics listener (plain HTTP, GET /metrics), e.g. 127.0.0.1:9464; empty = off. Labels carry route templates and status codes, never ids or PHI; keep it on localhost or a monitoring network";
    "crypto.kek", Secret, "", "Key-encryption key that wraps the data keys: 32 random bytes, base64 (`head -c32 /dev/urandom | base64`); required to serve";
    "crypto.rotation_kek", Secret, "", "New key-encryption key for `custodian keys rotate --kek` (32 bytes, base64); while set, also accepted to unwrap data keys";
    "crypto.blind_index_key", Secret, "", "HMAC key for the blind indexes of MRN, SSN, names and birth date (32 bytes, base64); separate from the KEK; required to serve";
    "crypto.export_key", Secret, "", "HMAC key of the pseudonyms and date shifts of de-identified exports (32 bytes, base64); must differ from the KEK and the blind-index key; same key = exports that join; not needed to serve";
    "auth.issuer", Str, "", "Bearer tokens: exact `iss` of accepted access tokens (https://, or http:// on localhost for tests). Setting any auth.* key enables bearer authentication; without the section bearer routes answer 401";
    "auth.audience", Str, "", "Bearer tokens: the API audience that `aud` must contain; required with auth.issuer";
    "auth.jwks_url", Str, "", "Bearer tokens: JWKS URL; empty = discovered from <issuer>/.well-known/openid-configuration (jwks_uri)";
    "auth.algorithms", List, "[\"RS256\", \"PS256\", \"ES256\", \"EdDSA\"]", "Bearer tokens: accepted signature algorithms (RS256/384/512, PS256/384/512, ES256/384, EdDSA); HS* and none are refused";
    "auth.clock_skew_secs", Int, "60", "Bearer tokens: leeway for exp/nbf/iat (at most 300)";
    "auth.max_token_age_secs", Int, "0", "Bearer tokens: refuse tokens whose iat is older than this (0 = off; when set, iat is required)";
    "auth.require_at_jwt_typ", Bool, "true", "Bearer tokens: require header typ at+jwt (RFC 9068), which rules out ID tokens completely; false accepts typ JWT or none (see operations: upgrading)";
    "auth.jwks_refetch_min_interval_secs", Int, "60", "Bearer tokens: an unknown kid (or a due refresh) fetches the JWKS at most once per this interval";
    "auth.jwks_max_staleness_secs", Int, "86400", "Bearer tokens: keep verifying with cached keys this long while the provider is unreachable";
    "auth.max_token_bytes", Int, "8192", "Bearer tokens: longer tokens are refused before parsing";
    "audit.chain_key", Secret, "", "HMAC-SHA256 key of the audit hash chain: base64 of exactly 32 random bytes (`openssl rand -base64 32`); required to serve and to verify; never change it for an existing chain";
    "audit.checkpoint_signing_key", Secret, "", "Ed25519 seed that signs audit checkpoints: base64 of exactly 32 random bytes, separate from audit.chain_key; required to serve; print the public key with `custodian audit public-key`";
    "audit.checkpoint_dir", Str, "", "Optional folder where every signed checkpoint is appended as one JSON line to checkpoints.jsonl (copy it to write-once storage); empty = database only";
    "audit.checkpoint_every_events", Int, "10000", "Write a signed checkpoint after this many audit events";
    "audit.checkpoint_every_secs", Int, "300", "Write a signed checkpoint at least this often (seconds) while new audit events arrive";
    "audit.batch_max", Int, "256", "Most audit events committed in one group-commit transaction";
    "audit.batch_wait_ms", Int, "2", "Longest wait (ms) to fill an audit batch after its first event";
    "audit.commit_timeout_ms", Int, "2000", "A request whose audit event is not committed within this time fails closed with 503";
    "console.issuer", Str, "", "Admin console: OpenID provider issuer URL (https://, or http:// on localhost for tests). Setting any console.* key enables the console; without the section console sign-in answers 404";
    "console.client_id", Str, "", "Admin console: OIDC client id registered at the provider; required with console.issuer";
    "console.client_secret", Secret, "", "Admin console: OIDC client secret; required with console.issuer";
    "console.redirect_url", Str, "", "Admin console: the callback URL registered at the provider, ending in /console/callback; required with console.issuer";
    "console.idle_timeout_secs", Int, "900", "Admin console: a session unused for this long ends";
    "console.absolute_timeout_secs", Int, "28800", "Admin console: a session ends this long after sign-in, used or not";
    "console.totp_lockout_secs", Int, "900", "Admin console: after 5 wrong TOTP codes in a row the account's TOTP check is locked this long; each further lock-out before a code is accepted doubles it (at most 24 hours)";
    "console.step_up_secs", Int, "300", "Admin console: sensitive actions (roles, care teams, sessions, TOTP reset, service clients) need a TOTP code entered within this many seconds, else the console asks for one first";
    "console.emergency_attempts_per_minute", Int, "10", "Admin console: emergency sign-in attempts allowed per minute from one address, whatever names it tries; all addresses together are held to 20 times this (reaching that ceiling logs an alert); counted in the database, shared by all instances";
    "break_glass.mode", Str, "emergency", "Break-glass: emergency (a grant is active at once; a privacy officer reviews it afterwards) | approval (a grant waits until another administrator approves it in the console; its clock starts at approval)";
    "break_glass.approval_facilities", List, "[]", "Break-glass: facility ids whose patients need approval whatever break_glass.mode says";
    "break_glass.reasons", List, "[\"emergency-treatment\", \"patient-unable-to-consent\", \"urgent-consult\", \"continuity-of-care\"]", "Break-glass: the reason codes a request may give";
    "break_glass.default_minutes", Int, "60", "Break-glass: a grant's duration when the request names none";
    "break_glass.max_minutes", Int, "240", "Break-glass: the longest duration a request may ask for (at most 1440)";
    "break_glass.max_active_grants", Int, "3", "Break-glass: most grants one person holds at once (active or waiting for approval)";
    "break_glass.auth_max_age_secs", Int, "900", "Break-glass: the person's sign-in (token auth_time) must be at most this old, else 401 with an RFC 9470 step-up challenge";
    "break_glass.acr_values", List, "[\"http://schemas.openid.net/pape/policies/2007/06/multi-factor\"]", "Break-glass: token acr values that show multi-factor authentication (an amr containing mfa does too)";
    "break_glass.review_days", Int, "7", "Break-glass: a privacy officer's review of a grant is due this many days after its request (overdue reviews are highlighted on the console dashboard)";
    "reidentify.role", Str, "privacy_officer", "Re-identification of export pseudonyms: the one role allowed to (privacy_officer or admin); it also needs a TOTP code entered with each request and a justification of 20 to 2000 characters; see docs/export.md#re-identification";
    "export.dir", Str, "exports", "Bulk export: directory of the output files, one sub-directory per job (de-identified files are plain NDJSON, identified files are sealed line by line); see docs/export.md";
    "export.worker", Bool, "true", "Bulk export: run export jobs on this instance (several instances may: each job is held by one runner under a lease)";
    "export.batch_size", Int, "500", "Bulk export: records read, transformed and written per batch (1 to 10000)";
    "export.batch_pause_ms", Int, "5", "Bulk export: pause after each batch so that exports never starve API requests (at most 60000)";
    "export.poll_ms", Int, "1000", "Bulk export: how often an idle runner looks for work and sweeps expired jobs (10 to 60000)";
    "export.lease_secs", Int, "30", "Bulk export: a runner's hold on a job; the job of a runner that stopped is resumed by another after this";
    "export.link_secs", Int, "300", "Bulk export: how long a download link in a manifest stays valid";
    "export.retain_mins", Int, "1440", "Bulk export: minutes a job and its files are kept after it was started or finished, then deleted";
    "export.k", Int, "5", "Bulk export: the k of the k-anonymity report of a de-identified export when the request names none";
    "detect.enabled", Bool, "true", "Detectors: run the privacy detectors over the audit trail on this instance (however many instances have it on, one at a time works, under a PostgreSQL advisory lock); see docs/privacy-detection.md";
    "detect.batch_max", Int, "2000", "Detectors: most audit events consumed in one pass (one transaction; 1 to 20000)";
    "detect.poll_ms", Int, "1000", "Detectors: pause between passes once caught up with the trail (10 to 60000)";
    "detect.denials_threshold", Int, "3", "Detectors (repeated-denial): refusals of one person for lack of a care relationship that raise an alert within detect.denials_window_mins";
    "detect.denials_window_mins", Int, "10", "Detectors (repeated-denial): the window in minutes (tumbling, at most 1440)";
    "detect.failures_threshold", Int, "20", "Detectors (auth-failure-spike): refusals answered 401/403/429 from one source address, one client or one person that raise an alert within detect.failures_window_mins";
    "detect.failures_window_mins", Int, "5", "Detectors (auth-failure-spike): the window in minutes (tumbling, at most 1440)";
    "detect.bulk_window_mins", Int, "60", "Detectors (bulk-access): the window in minutes (tumbling, at most 1440) in which the distinct patients one person accessed are counted";
    "detect.bulk_min_patients", Int, "50", "Detectors (bulk-access): the fewest distinct patients in a window that can raise an alert, whatever the baselines";
    "detect.bulk_factor", Int, "3", "Detectors (bulk-access): an alert needs more than this many times the person's own mean per active window and their role's mean";
    "detect.bulk_baseline_days", Int, "14", "Detectors (bulk-access): the days before the UTC day of the window over which both means are computed (at most 90; computed once per person or role and day)";
    "detect.name_search_threshold", Int, "30", "Detectors (name-search-sweep): permitted Patient searches by one person that raise an alert within detect.name_search_window_mins";
    "detect.name_search_window_mins", Int, "10", "Detectors (name-search-sweep): the window in minutes (tumbling, at most 1440)";
    "detect.work_start_hour", Int, "7", "Detectors (off-hours): the local hour (0 to 23) the working day starts at facilities without their own hours";
    "detect.work_end_hour", Int, "19", "Detectors (off-hours): the local hour (1 to 24, after detect.work_start_hour) the working day ends at (exclusive)";
    "detect.time_zone", Str, "UTC", "Detectors (off-hours): the IANA time zone of detect.work_start_hour and detect.work_end_hour (a facility's own hours carry their own zone)";
    "webhooks.enabled", Bool, "true", "Webhooks: run the delivery worker on this instance (however many instances have it on, one at a time delivers, under a PostgreSQL advisory lock); endpoints are managed in the console; see docs/webhooks.md";
    "webhooks.poll_ms", Int, "1000", "Webhooks: pause between passes over the due deliveries (10 to 60000)";
    "webhooks.batch_max", Int, "50", "Webhooks: most deliveries attempted in one pass (1 to 500)";
    "webhooks.max_attempts", Int, "8", "Webhooks: failed attempts after which a delivery is dead-lettered (it waits for a redelivery from the console; 1 to 50)";
    "webhooks.backoff_initial_secs", Int, "30", "Webhooks: wait after the first failed attempt; doubled after each further failure up to webhooks.backoff_max_secs";
    "webhooks.backoff_max_secs", Int, "3600", "Webhooks: the longest wait between two attempts (at most 86400)";
    "webhooks.timeout_secs", Int, "10", "Webhooks: longest wait for a receiver's answer, connection included (1 to 120); no 2xx answer in time is a failed attempt";
    "webhooks.ca_file", Str, "", "Webhooks: optional PEM bundle of CAs trusted for endpoint certificates besides the public web roots (an organisation's private CA); endpoints are HTTPS only";
    "webhooks.allow_private_hosts", Bool, "false", "Webhooks: allow endpoints on loopback, private (RFC 1918, ULA), link-local, unspecified and multicast addresses; off, such hosts (or names resolving to them) are refused when an endpoint is registered and at every delivery (SSRF guard)";
    "console.trusted_proxies", List, "[]", "Admin console: IP addresses of reverse proxies whose Forwarded / X-Forwarded-Host headers the Origin check of console forms believes; from any other peer those headers are ignored (empty = trust none)";
}

/// The configuration reference as a Markdown table (printed by `custodian settings`,
/// kept in docs/configuration.md; a test checks that the two agree).
pub fn markdown_table() -> String {
    let mut out =
        String::from("| Setting | Environment variable | Default | Meaning |\n|---|---|---|---|\n");
    for s in SETTINGS {
        let mut env = format!("`{}`", s.env_name());
        if s.kind == Kind::Secret {
            env.push_str(&format!(" or `{}_FILE`", s.env_name()));
        }
        let default = if s.default.is_empty() {
            "—".to_string()
        } else {
            format!("`{}`", s.default)
        };
        out.push_str(&format!(
            "| `{}` | {env} | {default} | {} |\n",
            s.key,
            s.doc.replace('|', "\\|")
        ));
    }
    out
}

pub fn setting(key: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.key == key)
}
