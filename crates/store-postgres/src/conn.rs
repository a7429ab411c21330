//! Connections: the pool, the role every pooled connection runs as, the check that this role
//! cannot bypass row-level security, the pipelined transaction every tenant operation runs in,
//! and the mapping of driver errors to the port's classes.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bulkhead_core::TenantId;
use bulkhead_store::BackendError;
use deadpool_postgres::{
    ClientWrapper, Hook, HookError, Manager, ManagerConfig, Object, Pool, PoolError,
    RecyclingMethod, Runtime,
};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Statement};

/// The role tenant traffic runs as. Created by the migrations; owns nothing.
pub const APP_ROLE: &str = "bulkhead_app";

/// The tables with row-level security: every row belongs to one tenant.
pub(crate) const TENANT_TABLES: [&str; 9] = [
    "collections",
    "records",
    "record_index",
    "idempotency",
    // Storage usage (migration 0005) and policy versions (migration 0003).
    "tenant_usage",
    "policies",
    // The audit tables of tenant logs (migration 0004).
    "audit_pending",
    "audit_entries",
    "audit_checkpoints",
];
/// Platform tables: read before a tenant context exists, no row-level security.
pub(crate) const REGISTRY_TABLES: [&str; 5] = [
    "settings",
    "tenants",
    "signing_keys",
    // Performance isolation (migration 0005).
    "tiers",
    "tenant_limits",
];

const BEGIN: &str = "BEGIN";
const BEGIN_READ_ONLY: &str = "BEGIN READ ONLY";
/// Transaction-local (`is_local = true`): gone at COMMIT or ROLLBACK, so it never outlives the
/// transaction into the next use of the pooled connection.
const SET_TENANT: &str = "SELECT set_config('bulkhead.tenant_id', $1, true)";
const COMMIT: &str = "COMMIT";

/// How long a request waits for a free connection, and for a new one to be made.
const WAIT_TIMEOUT: Duration = Duration::from_secs(10);
const CREATE_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Who the pooled connections run as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Identity {
    /// The URL's user (which may be a superuser or the tables' owner), narrowed to
    /// [`APP_ROLE`] with `SET ROLE` as soon as the connection is made.
    SetRole,
    /// The URL's user as it is: a deployment that gives the application its own LOGIN role.
    AsIs,
}

/// Builds the pool. Every connection it makes is narrowed and checked by [`prepare_session`]
/// before its first use; one that fails the check is never handed out.
pub(crate) fn pool(url: &str, size: usize, identity: Identity) -> Result<Pool, BackendError> {
    let mut cfg: tokio_postgres::Config = url
        .parse()
        .map_err(|e| BackendError::Other(format!("invalid database url: {e}")))?;
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(CONNECT_TIMEOUT);
    }
    if cfg.get_application_name().is_none() {
        cfg.application_name("bulkhead");
    }
    // Fast recycling checks only that the connection is not closed: it runs no query, so
    // nothing (like `DISCARD ALL`, which would also undo `SET ROLE`) resets the session.
    // Connections whose state we cannot vouch for are detached by `Conn`, never recycled.
    let manager = Manager::from_config(
        cfg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(WAIT_TIMEOUT))
        .create_timeout(Some(CREATE_TIMEOUT))
        .post_create(Hook::async_fn(move |client: &mut ClientWrapper, _| {
            Box::pin(async move { prepare_session(client, identity).await })
        }))
        .build()
        .map_err(|e| BackendError::Other(format!("cannot build the connection pool: {e}")))
}

/// Narrows a new connection to the application role and refuses it if that role could bypass
/// row-level security.
///
/// INVARIANT: no pooled connection serves a query before this passed: its role is not a
/// superuser, has no BYPASSRLS, does not own (nor belongs to the owner of) any Bulkhead table,
/// and every tenant-owned table has row-level security enabled and forced.
async fn prepare_session(client: &mut ClientWrapper, identity: Identity) -> Result<(), HookError> {
    if identity == Identity::SetRole {
        client
            .batch_execute(&format!("SET ROLE {APP_ROLE}"))
            .await
            .map_err(|e| {
                HookError::message(format!(
                    "cannot switch to role `{APP_ROLE}` (run migrations first; they create it): {}",
                    describe(&e)
                ))
            })?;
    }
    let tables: Vec<&str> = TENANT_TABLES
        .iter()
        .chain(&REGISTRY_TABLES)
        .copied()
        .collect();
    let rows = client
        .query(
            "SELECT r.rolname::text, r.rolsuper, r.rolbypassrls, t.name,
                    c.oid IS NOT NULL,
                    coalesce(pg_has_role(current_user, c.relowner, 'MEMBER'), false),
                    coalesce(c.relrowsecurity AND c.relforcerowsecurity, false)
               FROM pg_roles r
              CROSS JOIN unnest($1::text[]) AS t(name)
               LEFT JOIN pg_class c ON c.oid = to_regclass(t.name)
              WHERE r.rolname = current_user",
            &[&tables],
        )
        .await
        .map_err(HookError::Backend)?;
    let mut role = String::new();
    for row in &rows {
        let (name, superuser, bypass, table, exists, owner, forced): (
            String,
            bool,
            bool,
            String,
            bool,
            bool,
            bool,
        ) = (
            row.try_get(0).map_err(HookError::Backend)?,
            row.try_get(1).map_err(HookError::Backend)?,
            row.try_get(2).map_err(HookError::Backend)?,
            row.try_get(3).map_err(HookError::Backend)?,
            row.try_get(4).map_err(HookError::Backend)?,
            row.try_get(5).map_err(HookError::Backend)?,
            row.try_get(6).map_err(HookError::Backend)?,
        );
        let why = if superuser {
            Some("superuser".to_owned())
        } else if bypass {
            Some("BYPASSRLS".to_owned())
        } else if owner {
            Some(format!("owner of table `{table}`"))
        } else {
            None
        };
        if let Some(why) = why {
            return Err(HookError::message(format!(
                "refusing to serve tenant traffic as role `{name}`: it can bypass row-level \
                 security ({why})"
            )));
        }
        if !exists {
            return Err(HookError::message(format!(
                "table `{table}` does not exist: run migrations first"
            )));
        }
        if TENANT_TABLES.contains(&table.as_str()) && !forced {
            return Err(HookError::message(format!(
                "row-level security is not enabled and forced on table `{table}`: run \
                 migrations first"
            )));
        }
        role = name;
    }
    if rows.is_empty() {
        return Err(HookError::message(
            "cannot read the current role's attributes from `pg_roles`",
        ));
    }
    tracing::debug!(role = %role, "postgres: connection ready");
    Ok(())
}

/// One pooled connection, for one operation.
///
/// INVARIANT: a connection goes back to the pool only in a state we know: idle, outside any
/// transaction, with no tenant setting. When an error leaves that in doubt (the connection
/// broke, or a statement failed in a way that may have kept a transaction open), the connection
/// is detached from the pool and closed when this is dropped.
pub(crate) struct Conn {
    /// `Some` until dropped.
    obj: Option<Object>,
    /// Set once the connection's state is in doubt.
    broken: AtomicBool,
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.broken.load(Ordering::Relaxed)
            && let Some(obj) = self.obj.take()
        {
            // Detached from the pool: dropping the client closes the connection.
            drop(Object::take(obj));
        }
    }
}

/// Where an audit append goes relative to the statement it vouches for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AppendOrder {
    /// After it: the append checks that the change (or the read record) is there.
    After,
    /// Before it: the append locks the record it vouches for (a delete).
    Before,
}

/// Whether a transaction only reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Read,
    Write,
}

/// The statements that frame a transaction, prepared on the connection it runs on.
pub(crate) struct Tx {
    begin: Statement,
    set_tenant: Statement,
    commit: Statement,
}

impl Conn {
    pub(crate) async fn get(pool: &Pool) -> Result<Self, BackendError> {
        let obj = pool.get().await.map_err(map_pool)?;
        Ok(Self {
            obj: Some(obj),
            broken: AtomicBool::new(false),
        })
    }

    /// The client. Always there until `Conn` is dropped.
    pub(crate) fn client(&self) -> Result<&ClientWrapper, BackendError> {
        self.obj
            .as_deref()
            .ok_or_else(|| BackendError::Other("connection already released".into()))
    }

    /// Marks the connection for disposal: it is closed, not recycled, when this is dropped.
    pub(crate) fn discard(&self) {
        self.broken.store(true, Ordering::Relaxed);
    }

    /// Maps an error, first marking the connection for disposal if the error leaves its state
    /// in doubt.
    pub(crate) fn fail(&self, e: &tokio_postgres::Error) -> BackendError {
        if poisons(e) {
            self.broken.store(true, Ordering::Relaxed);
        }
        map(e)
    }

    /// Prepares `sql` (each statement once per connection, then cached). Misses are prepared
    /// concurrently, so they too share round trips.
    pub(crate) async fn prepare<const N: usize>(
        &self,
        sql: [&str; N],
    ) -> Result<[Statement; N], BackendError> {
        let c = self.client()?;
        let results = futures::future::join_all(sql.iter().map(|s| c.prepare_cached(s))).await;
        let mut out = Vec::with_capacity(N);
        for r in results {
            out.push(r.map_err(|e| self.fail(&e))?);
        }
        <[Statement; N]>::try_from(out)
            .map_err(|_| BackendError::Other("statement count mismatch".into()))
    }

    /// Prepares a transaction's frame and its body's statements, in one go.
    pub(crate) async fn prepare_tx<const N: usize>(
        &self,
        mode: Mode,
        sql: [&str; N],
    ) -> Result<(Tx, [Statement; N]), BackendError> {
        let begin = match mode {
            Mode::Read => BEGIN_READ_ONLY,
            Mode::Write => BEGIN,
        };
        let c = self.client()?;
        let (frame, body) = futures::join!(
            futures::future::try_join3(
                c.prepare_cached(begin),
                c.prepare_cached(SET_TENANT),
                c.prepare_cached(COMMIT),
            ),
            self.prepare(sql),
        );
        let (begin, set_tenant, commit) = frame.map_err(|e| self.fail(&e))?;
        Ok((
            Tx {
                begin,
                set_tenant,
                commit,
            },
            body?,
        ))
    }

    /// Runs one statement outside any explicit transaction (registry operations).
    pub(crate) async fn run<T>(
        &self,
        statement: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, BackendError> {
        statement.await.map_err(|e| self.fail(&e))
    }

    /// Runs one statement that sets the tenant for row-level security itself: a call of one of
    /// the record functions of `migrations/0002_single_statement.sql`, whose first step is
    /// `set_config('bulkhead.tenant_id', p_tenant, true)`.
    ///
    /// Sent outside any explicit transaction block, the statement is its own implicit
    /// transaction: the tenant setting ends with it (as after `COMMIT`), and a failure rolls it
    /// back whole. One statement, one Sync, one answer: the cheapest a tenant operation can be
    /// (see BENCHMARKS.md, "PostgreSQL vs pgbench").
    ///
    /// INVARIANT: `statement` is a call of a function that sets the tenant from the same
    /// `p_tenant` argument it filters on; a plain statement on a tenant-owned table sent this
    /// way would run with no tenant set and find nothing (fail closed), never another tenant.
    pub(crate) async fn tenant_statement<T>(
        &self,
        statement: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, BackendError> {
        self.run(statement).await
    }

    /// A [`Conn::tenant_statement`] that must commit together with an audit append when
    /// `append` is given: then both go in one pipelined write transaction (still one round
    /// trip), in the order `order` says; without it, the statement alone, as its own
    /// transaction. Returns the statement's result.
    pub(crate) async fn tenant_statement_audited<T, U>(
        &self,
        tenant: TenantId,
        statement: impl Future<Output = Result<T, tokio_postgres::Error>>,
        append: Option<impl Future<Output = Result<U, tokio_postgres::Error>>>,
        order: AppendOrder,
    ) -> Result<T, BackendError> {
        let Some(append) = append else {
            return self.tenant_statement(statement).await;
        };
        let (tx, []) = self.prepare_tx(Mode::Write, []).await?;
        match order {
            AppendOrder::After => {
                let both = futures::future::try_join(statement, append);
                Ok(self.transaction(&tx, tenant, both).await?.0)
            }
            AppendOrder::Before => {
                let both = futures::future::try_join(append, statement);
                Ok(self.transaction(&tx, tenant, both).await?.1)
            }
        }
    }

    /// Runs `body` in one transaction with `tenant` set for row-level security.
    ///
    /// Pipelined: `BEGIN`, `set_config`, `body`'s statement and `COMMIT` are polled together
    /// by one `join!`, and tokio-postgres writes each request when it is first polled, so all
    /// four leave in this order, back to back, and the whole transaction costs one round trip.
    /// `body` must therefore be ONE statement future on this connection, already prepared
    /// (a future that awaited before sending would be sent after `COMMIT`).
    ///
    /// Failure handling: every request is written even if an earlier one fails (`join!`, not
    /// `try_join!`), so `COMMIT` always follows `BEGIN`; after a failed statement PostgreSQL
    /// turns that `COMMIT` into a rollback, and the connection is idle and clean. The first
    /// error, in pipeline order, is returned. If the connection's state is in doubt (the error
    /// is not a plain SQL error, or `COMMIT` itself failed) it is discarded, not recycled.
    /// Cancellation: once first polled, all four requests are queued on the connection, so a
    /// dropped future still leaves a finished transaction behind.
    pub(crate) async fn transaction<T>(
        &self,
        tx: &Tx,
        tenant: TenantId,
        body: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, BackendError> {
        let c = self.client()?;
        let tenant = tenant.to_string();
        let tenant: [&(dyn ToSql + Sync); 1] = [&tenant];
        let (begun, set, out, committed) = futures::join!(
            c.execute(&tx.begin, &[]),
            c.execute(&tx.set_tenant, &tenant),
            body,
            c.execute(&tx.commit, &[]),
        );
        let in_doubt = [begun.as_ref().err(), set.as_ref().err(), out.as_ref().err()]
            .into_iter()
            .flatten()
            .any(poisons)
            || committed.is_err();
        if in_doubt {
            self.broken.store(true, Ordering::Relaxed);
        }
        begun.map_err(|e| map(&e))?;
        set.map_err(|e| map(&e))?;
        let out = out.map_err(|e| map(&e))?;
        committed.map_err(|e| map(&e))?;
        Ok(out)
    }
}

/// Whether an error leaves the connection's state in doubt. A plain SQL error reported by the
/// server leaves it usable (its transaction is rolled back by the following `COMMIT`); a
/// client-side error (the request may not have been sent, or only in part), a lost
/// connection or a server going away do not.
fn poisons(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        Some(code) => unavailable(code),
        None => true,
    }
}

/// SQLSTATEs that mean "try again later": the server is shutting down, restarting, out of
/// connections or resources, read-only (a standby), or the transaction lost a race.
fn unavailable(code: &SqlState) -> bool {
    let c = code.code();
    // 08: connection exceptions. 53: insufficient resources (disk full, out of memory, too
    // many connections). 57P: the server ended the session (admin shutdown, crash shutdown,
    // cannot connect now, database dropped, idle session timeout).
    c.starts_with("08")
        || c.starts_with("53")
        || c.starts_with("57P")
        || *code == SqlState::T_R_SERIALIZATION_FAILURE
        || *code == SqlState::T_R_DEADLOCK_DETECTED
        || *code == SqlState::READ_ONLY_SQL_TRANSACTION
}

/// Maps a driver error to the port's classes.
pub(crate) fn map(e: &tokio_postgres::Error) -> BackendError {
    match e.code() {
        Some(code) if unavailable(code) => BackendError::Unavailable(describe(e)),
        // A uniqueness rule (in practice: a live tenant name is taken), as SQLite reports it.
        Some(code) if *code == SqlState::UNIQUE_VIOLATION => BackendError::Conflict(describe(e)),
        Some(_) => BackendError::Other(describe(e)),
        None if e.is_closed() || io_error(e) => BackendError::Unavailable(describe(e)),
        None => BackendError::Other(describe(e)),
    }
}

fn map_pool(e: PoolError) -> BackendError {
    match e {
        PoolError::Backend(e) => map(&e),
        PoolError::Timeout(t) => {
            BackendError::Unavailable(format!("no database connection available ({t:?} timeout)"))
        }
        PoolError::Closed => BackendError::Unavailable("the connection pool is closed".into()),
        PoolError::NoRuntimeSpecified => {
            BackendError::Other("the connection pool has no runtime".into())
        }
        PoolError::PostCreateHook(HookError::Message(m)) => BackendError::Other(m.into_owned()),
        PoolError::PostCreateHook(HookError::Backend(e)) => map(&e),
    }
}

/// Whether the error came from the socket (refused, reset, timed out).
fn io_error(e: &tokio_postgres::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// The error with the server's detail, which `Display` leaves out.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({}): {}", db.severity(), db.code().code(), db.message()),
        None => with_causes(e),
    }
}

/// An error's message followed by its causes (`connection refused`, …), which its own
/// message leaves out.
pub(crate) fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let m = c.to_string();
        if !out.contains(&m) {
            out.push_str(": ");
            out.push_str(&m);
        }
        cause = c.source();
    }
    out
}
