//! PostgreSQL access: the connection pool, running Diesel work off the async workers,
//! migrations under an advisory lock, and readiness.

pub mod alerts;
pub mod break_glass;
pub mod cases;
pub mod claims;
pub mod config;
pub mod documents;
pub mod export_jobs;
pub mod facilities;
pub mod history;
pub mod observations;
pub mod patients;
pub mod pending;
pub mod phi;
pub mod records;
pub mod reidentifications;
/// The Diesel schema lives at the floor of the module graph (`crate::schema`) so that
/// `crypto` and `audit` can keep their own tables without importing `db`.
pub use crate::schema;
pub mod scope;
pub mod suppressions;
pub mod users;
pub mod webhooks;

use crate::error::AppError;
use anyhow::Context;
use config::DatabaseConfig;
use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// Key of the session-level advisory lock that serialises migrations across instances.
const MIGRATION_LOCK_KEY: i64 = 0x4355_5354_4d49_4752; // "CUSTMIGR"

pub type PgPool = Pool<ConnectionManager<PgConnection>>;

/// The database handle shared by all request handlers.
#[derive(Clone)]
pub struct Db {
    pool: PgPool,
    /// For the rare task that must hold a session of its own (an advisory lock across
    /// awaits): [`Db::dedicated`].
    url: String,
    statement_timeout_ms: u64,
}

#[derive(Debug)]
struct SessionSetup {
    statement_timeout_ms: u64,
}

impl CustomizeConnection<PgConnection, diesel::r2d2::Error> for SessionSetup {
    fn on_acquire(&self, conn: &mut PgConnection) -> Result<(), diesel::r2d2::Error> {
        conn.batch_execute(&format!(
            "SET application_name = 'custodian'; SET statement_timeout = {}",
            self.statement_timeout_ms
        ))
        .map_err(diesel::r2d2::Error::QueryError)
    }
}

/// Adds libpq's `connect_timeout` to the URL unless the operator set one, so that an
/// unreachable server costs a bounded wait.
pub fn with_connect_timeout(url: &str, secs: u64) -> String {
    if url.contains("connect_timeout=") {
        return url.to_string();
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}connect_timeout={secs}")
}

impl Db {
    /// (connections open, of which idle), for the metrics.
    pub fn pool_state(&self) -> (u32, u32) {
        let s = self.pool.state();
        (s.connections, s.idle_connections)
    }

    /// Builds the pool without connecting: the service starts (and reports not ready)
    /// even when the database is down.
    pub fn new(cfg: &DatabaseConfig) -> Db {
        let url = with_connect_timeout(cfg.url.expose(), cfg.connect_timeout_secs);
        let manager = ConnectionManager::<PgConnection>::new(url.clone());
        let pool = Pool::builder()
            .max_size(cfg.pool_size)
            .min_idle(Some(0))
            // No `SELECT 1` on every checkout (three per API read): a connection that
            // died is reported by its next query (503) and dropped by r2d2 when returned.
            .test_on_check_out(false)
            .connection_timeout(cfg.acquire_timeout())
            .connection_customizer(Box::new(SessionSetup {
                statement_timeout_ms: cfg.statement_timeout_ms,
            }))
            .build_unchecked(manager);
        Db {
            pool,
            url,
            statement_timeout_ms: cfg.statement_timeout_ms,
        }
    }

    /// A connection outside the pool, set up like the pool's, for a task that holds a
    /// session-level lock (closing it releases the lock, whatever happened).
    pub fn dedicated(&self) -> Result<PgConnection, AppError> {
        let mut conn = PgConnection::establish(&self.url).map_err(|_| AppError::Unavailable)?;
        SessionSetup {
            statement_timeout_ms: self.statement_timeout_ms,
        }
        .on_acquire(&mut conn)
        .map_err(|_| AppError::Unavailable)?;
        Ok(conn)
    }

    /// Runs blocking Diesel work on the blocking thread pool. An exhausted pool or an
    /// unreachable database becomes [`AppError::Unavailable`] after the acquire timeout.
    pub async fn run<T, F>(&self, f: F) -> Result<T, AppError>
    where
        F: FnOnce(&mut PgConnection) -> Result<T, AppError> + Send + 'static,
        T: Send + 'static,
    {
        let pool = self.pool.clone();
        actix_web::web::block(move || {
            let mut conn = pool.get()?;
            f(&mut conn)
        })
        .await
        .map_err(|_| AppError::internal("blocking database task was cancelled"))?
    }
}

/// Runs pending migrations on a dedicated connection, holding an advisory lock so that
/// instances starting together migrate one after the other. Returns the versions applied.
pub fn migrate(url: &str, connect_timeout_secs: u64) -> anyhow::Result<Vec<String>> {
    let mut conn = PgConnection::establish(&with_connect_timeout(url, connect_timeout_secs))
        .context("database.url: cannot connect to PostgreSQL")?;
    diesel::sql_query(format!("SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})"))
        .execute(&mut conn)
        .context("cannot take the migration lock")?;
    let result = conn
        .run_pending_migrations(MIGRATIONS)
        .map(|versions| versions.iter().map(ToString::to_string).collect::<Vec<_>>())
        .map_err(|e| anyhow::anyhow!("migration failed: {e}"));
    let unlock = diesel::sql_query(format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})"))
        .execute(&mut conn);
    let applied = result?;
    unlock.context("cannot release the migration lock")?;
    Ok(applied)
}

/// Readiness: the database answers and no migration is pending.
pub fn check_ready(conn: &mut PgConnection) -> Result<(), AppError> {
    diesel::sql_query("SELECT 1").execute(conn)?;
    let pending = conn
        .has_pending_migration(MIGRATIONS)
        .map_err(|_| AppError::Unavailable)?;
    if pending {
        return Err(AppError::Unavailable);
    }
    Ok(())
}
