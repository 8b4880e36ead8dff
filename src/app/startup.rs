//! Builds and starts the service: TLS listener, optional redirect listener, migrations.
//! Returns the bound addresses so tests can start the real app on port 0.

use crate::app::{self, ExtraRoutes};
use crate::audit::{AuditWriter, WriterSettings};
use crate::config::Config;
use crate::db::{self, Db};
use crate::state::AppState;
use crate::tls;
use crate::web::ratelimit::RateLimiter;
use crate::web::redirect;
use actix_web::HttpServer;
use actix_web::dev::{Server, ServerHandle};
use anyhow::Context;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Default)]
pub struct Options {
    /// Routes that tests add behind the same middleware.
    pub extra_routes: Option<ExtraRoutes>,
    /// Tests stop servers through the handle instead of process signals. Otherwise
    /// SIGINT and SIGTERM both shut down gracefully ([`shutdown_on_signal`]).
    pub disable_signals: bool,
    /// `custodian dev` only: serve the development JWKS at `GET /dev/jwks.json` and trust
    /// the dev certificate when fetching it. `serve` never sets this.
    pub dev_jwks: Option<crate::dev::token::DevJwks>,
    /// `custodian dev` only: the development sign-in provider under `/dev-idp` (the
    /// console trusts the dev certificate of `dev_jwks` when talking to it). `serve`
    /// never sets this.
    pub dev_idp: Option<std::sync::Arc<crate::dev::idp::DevIdp>>,
    /// The clock everything that decides by time reads; `None` (as in `serve` and `dev`)
    /// is the system clock. Tests pass a [`crate::domain::clock::ManualClock`].
    pub clock: Option<crate::domain::SharedClock>,
}

pub struct Application {
    https_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    https: Server,
    http: Option<Server>,
    metrics: Option<Server>,
    signals: Option<Signals>,
}

/// SIGINT and SIGTERM, registered at build time so that a signal arriving as soon as the
/// service says it is serving is already ours (not the default "terminate now").
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Application {
    pub async fn build(config: Config, options: Options) -> anyhow::Result<Application> {
        tls::install_default_provider();
        let tls_config = tls::server_config(&config.tls)?;
        let audit_settings = WriterSettings::from_config(&config.audit, &config.database)?;
        if config.database.migrate_on_start {
            let url = config.database.url.clone();
            let timeout = config.database.connect_timeout_secs;
            let applied = actix_web::web::block(move || db::migrate(url.expose(), timeout))
                .await
                .context("migration task failed")??;
            if !applied.is_empty() {
                tracing::info!(count = applied.len(), "applied migrations");
            }
        }
        let clock = options
            .clock
            .clone()
            .unwrap_or_else(crate::domain::clock::system);
        let dev_root = options
            .dev_jwks
            .as_ref()
            .and_then(|d| d.trust_root_pem.clone());
        let tokens = config
            .auth
            .as_ref()
            .map(|auth| {
                crate::auth::TokenVerifier::with_trusted_root(
                    auth,
                    dev_root.as_deref(),
                    clock.clone(),
                )
            })
            .transpose()?;
        let keyring = {
            let crypto = config.crypto.clone();
            let url = config.database.url.clone();
            let timeout = config.database.connect_timeout_secs;
            actix_web::web::block(move || {
                crate::app::keys::load_keyring(&crypto, url.expose(), timeout)
            })
            .await
            .context("key loading task failed")??
        };
        tracing::info!(
            active_key_version = ?keyring.active_version(),
            kek_id = keyring.primary_provider().key_id(),
            "keyring loaded"
        );
        let audit = AuditWriter::start(audit_settings).context("cannot start the audit writer")?;
        let floods = std::sync::Arc::new(crate::audit::flood::FloodTally::new(
            audit.clone(),
            clock.clone(),
        ));
        crate::audit::flood::spawn_sweeper(&floods);
        let state = actix_web::web::Data::new(AppState {
            db: Db::new(&config.database),
            keyring: std::sync::Arc::new(keyring),
            tokens,
            audit,
            client_identities: std::sync::Arc::new(config.tls.client_identities()?),
            principal_limit: RateLimiter::new(
                config.ratelimit.per_principal_per_minute,
                config.ratelimit.per_principal_burst,
            )
            .map(std::sync::Arc::new),
            floods,
            public_origin: public_base(&config.server.public_url),
            clock,
            break_glass: std::sync::Arc::new(config.break_glass.clone()),
            export_key: crate::crypto::ExportKey::from_config(&config.crypto)
                .context("crypto.export_key")?
                .map(std::sync::Arc::new),
            reidentify: std::sync::Arc::new(config.reidentify.clone()),
            allow_private_webhook_hosts: config.webhooks.allow_private_hosts,
        });
        // Break-glass expiry is recorded by one sweeper across instances, off the request
        // path (access stops at expiry regardless: the decision point compares times).
        crate::access::expiry::spawn_sweeper(&state.clone().into_inner());

        // Bulk export jobs: one runner per instance (a lease per job), and the sweeper of
        // expired jobs and files.
        {
            let key = crate::crypto::ExportKey::from_config(&config.crypto)
                .map_err(|e| anyhow::anyhow!("crypto.export_key: {e}"))?
                .map(std::sync::Arc::new);
            let rules = crate::deid::Rules::default_rules()
                .map_err(|e| anyhow::anyhow!("de-identification rules: {e}"))?;
            let engine = std::sync::Arc::new(crate::export::runner::Engine {
                config: config.export.clone(),
                key,
                rules: std::sync::Arc::new(rules),
                owner: uuid::Uuid::new_v4(),
            });
            crate::export::runner::spawn(
                std::sync::Arc::downgrade(&state.clone().into_inner()),
                engine,
            );
        }

        // The detectors live as long as the state (the task holds it weakly).
        crate::detect::spawn(
            std::sync::Arc::downgrade(&state.clone().into_inner()),
            state.db.clone(),
            config.detect.clone(),
            state.clock.clone(),
        );

        // Webhook delivery: one runner across instances, as long as the state lives.
        if config.webhooks.enabled {
            let deliverer = crate::webhooks::Deliverer::new(
                state.db.clone(),
                state.keyring.clone(),
                state.clock.clone(),
                config.webhooks.clone(),
                &config.server.public_url,
            )?;
            crate::webhooks::spawn(
                std::sync::Arc::downgrade(&state.clone().into_inner()),
                deliverer,
            );
        }

        // The console's settings are app data of their own (the state does not know the
        // console); without `[console]` every console route answers 404.
        let console = config
            .console
            .as_ref()
            .map(|c| {
                let mut console = crate::console::settings::Console::new(c)?;
                // `custodian dev` only: the console signs in at the dev provider, served
                // by this very server under its self-signed certificate.
                if options.dev_idp.is_some()
                    && let Some(pem) = dev_root.as_deref()
                {
                    console.oidc.trust_dev_root(pem)?;
                }
                Ok::<_, crate::error::AppError>(console)
            })
            .transpose()
            .map_err(|e| anyhow::anyhow!("console: {e}"))?
            .map(actix_web::web::Data::new);

        let workers = match config.server.workers {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        let app_config = config.clone();
        // One limiter for all workers of this instance.
        let address_limit = RateLimiter::new(
            config.ratelimit.per_address_per_minute,
            config.ratelimit.per_address_burst,
        )
        .map(std::sync::Arc::new);
        let metrics_db = state.db.clone();
        let extra = options.extra_routes;
        let dev_jwks = options.dev_jwks.clone();
        let dev_idp = options.dev_idp.clone();
        let https = HttpServer::new(move || {
            let app = app::build_app(
                state.clone(),
                address_limit.clone(),
                app_config.clone(),
                extra,
                dev_jwks.clone(),
                dev_idp.clone(),
            );
            match console.clone() {
                Some(console) => app.app_data(console),
                None => app,
            }
        })
        .workers(workers)
        .shutdown_timeout(config.server.shutdown_timeout_secs)
        .client_request_timeout(Duration::from_secs(10))
        // Responses leave in several small TLS records (HTTP/2 frames especially): with
        // Nagle on, the last one waits for the client's delayed ACK, ~40 ms per request.
        .tcp_nodelay(true)
        .on_connect(tls::on_connect)
        .bind_rustls_0_23(config.server.listen, tls_config)
        .with_context(|| format!("server.listen: cannot listen on {}", config.server.listen))?
        // actix treats SIGINT (and SIGQUIT) as a *forced* stop that drops in-flight
        // requests; only SIGTERM is graceful there. We handle the signals ourselves so
        // that both are graceful, as documented (docs/operations.md).
        .disable_signals();
        let signals = if options.disable_signals {
            None
        } else {
            use tokio::signal::unix::{SignalKind, signal};
            Some(Signals {
                interrupt: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
                terminate: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            })
        };
        let https_addr = https
            .addrs()
            .first()
            .copied()
            .context("server.listen: no address bound")?;

        let (http, http_addr) = match config.server.http_redirect_listen {
            Some(addr) => {
                let target = redirect::RedirectTarget {
                    base: public_base(&config.server.public_url),
                };
                let limit = config.server.body_limit_bytes;
                let server = HttpServer::new(move || redirect::build_app(target.clone(), limit))
                    .workers(1)
                    .tcp_nodelay(true)
                    .shutdown_timeout(config.server.shutdown_timeout_secs)
                    .disable_signals()
                    .bind(addr)
                    .with_context(|| {
                        format!("server.http_redirect_listen: cannot listen on {addr}")
                    })?;
                let bound = server.addrs().first().copied();
                (Some(server.run()), bound)
            }
            None => (None, None),
        };

        let (metrics, metrics_addr) = match config.metrics.listen {
            Some(addr) => {
                let (server, bound) =
                    crate::monitoring::server(addr, move || metrics_db.pool_state())?;
                (Some(server), Some(bound))
            }
            None => (None, None),
        };

        Ok(Application {
            https_addr,
            http_addr,
            metrics_addr,
            https: https.run(),
            http,
            metrics,
            signals,
        })
    }

    pub fn https_addr(&self) -> SocketAddr {
        self.https_addr
    }

    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    pub fn handles(&self) -> Vec<ServerHandle> {
        let mut handles = vec![self.https.handle()];
        handles.extend(self.http.as_ref().map(Server::handle));
        handles.extend(self.metrics.as_ref().map(Server::handle));
        handles
    }

    /// Serves until a shutdown signal (or `handles()[..].stop()`), then drains.
    pub async fn run(mut self) -> std::io::Result<()> {
        if let Some(signals) = self.signals.take() {
            tokio::spawn(shutdown_on_signal(signals, self.handles()));
        }
        // Every listener is stopped by the signal task and drains on its own.
        let servers = std::iter::once(self.https)
            .chain(self.http)
            .chain(self.metrics);
        futures_util::future::join_all(servers)
            .await
            .into_iter()
            .collect()
    }
}

/// The first SIGINT or SIGTERM stops both listeners gracefully: no new connections,
/// in-flight requests finish (up to `server.shutdown_timeout_secs`). A second signal
/// while draining stops at once, for an operator who does not want to wait.
async fn shutdown_on_signal(mut signals: Signals, handles: Vec<ServerHandle>) {
    let name = tokio::select! {
        _ = signals.interrupt.recv() => "SIGINT",
        _ = signals.terminate.recv() => "SIGTERM",
    };
    tracing::info!(
        signal = name,
        "shutting down: no new connections, in-flight requests finish (a second signal stops at once)"
    );
    let graceful = futures_util::future::join_all(handles.iter().map(|h| h.stop(true)));
    tokio::select! {
        _ = graceful => {}
        _ = signals.interrupt.recv() => force(&handles).await,
        _ = signals.terminate.recv() => force(&handles).await,
    }
}

async fn force(handles: &[ServerHandle]) {
    tracing::warn!("second shutdown signal: stopping without waiting for in-flight requests");
    futures_util::future::join_all(handles.iter().map(|h| h.stop(false))).await;
}

/// `https://host[:port]` of the public URL, without path.
fn public_base(public_url: &str) -> String {
    url::Url::parse(public_url)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_else(|_| public_url.trim_end_matches('/').to_string())
}
