//! Test support for every crate that tests against PostgreSQL (feature `testing`): whether
//! such tests run at all ([`test_url`]), and a fresh, migrated database per test ([`TestDb`]).
//!
//! Tests get PostgreSQL from `BULKHEAD_TEST_DATABASE_URL`, an admin URL (a user that may
//! create and drop databases, e.g. `postgres://postgres@127.0.0.1:5432/postgres`). Each test
//! creates its own database `bulkhead_test_<uuid>` from it and drops it when done, so tests
//! run in parallel without seeing each other's rows.

use bulkhead_store::BackendError;
use tokio_postgres::NoTls;

use crate::PostgresStore;
use crate::conn::map;

/// The variable naming the admin URL tests create their databases with.
pub const URL_VAR: &str = "BULKHEAD_TEST_DATABASE_URL";

/// The admin URL tests create their databases with, or `None` when they cannot run.
///
/// The rule: without `BULKHEAD_TEST_DATABASE_URL`, a test prints why it did not run and
/// passes, so `cargo test` works on a machine without PostgreSQL; but under CI (`CI` set and
/// not empty, `false` or `0`) this panics instead: CI never passes by not testing.
pub fn test_url() -> Option<String> {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            if under_ci() {
                not_configured_under_ci();
            }
            eprintln!("postgres tests did not run: {URL_VAR} is not set");
            None
        }
    }
}

fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

#[allow(
    clippy::panic,
    reason = "a test that cannot run under CI must fail, not pass silently"
)]
fn not_configured_under_ci() -> ! {
    panic!("postgres tests cannot run: {URL_VAR} is not set, and under CI they must");
}

/// `url` with its database (and, if given, its user and password, and its host and port)
/// replaced. Accepts the URL form (`postgres://user@host:port/db?opts`) and the key/value
/// form (`host=… user=…`, where later keys win).
pub fn rewrite_url(
    url: &str,
    dbname: &str,
    user: Option<(&str, &str)>,
    host_port: Option<(&str, u16)>,
) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        // Hosts and ports add up in this form rather than replace: drop the old ones.
        let kept: Vec<&str> = url
            .split_whitespace()
            .filter(|kv| {
                host_port.is_none()
                    || !["host=", "hostaddr=", "port="]
                        .iter()
                        .any(|k| kv.starts_with(k))
            })
            .collect();
        let mut out = format!("{} dbname={dbname}", kept.join(" "));
        if let Some((u, p)) = user {
            out.push_str(&format!(" user={u} password={p}"));
        }
        if let Some((h, p)) = host_port {
            out.push_str(&format!(" host={h} port={p}"));
        }
        return out;
    };
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let authority = rest.split_once('/').map_or(rest, |(a, _)| a);
    let (userinfo, host) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u.to_owned()), h.to_owned()),
        None => (None, authority.to_owned()),
    };
    let userinfo = user.map(|(u, p)| format!("{u}:{p}")).or(userinfo);
    let host = host_port.map_or(host, |(h, p)| format!("{h}:{p}"));
    let mut out = match userinfo {
        Some(u) => format!("{scheme}://{u}@{host}/{dbname}"),
        None => format!("{scheme}://{host}/{dbname}"),
    };
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// Runs `sql` on `url` with a connection of its own, driven on the current runtime.
async fn execute(url: &str, sql: &str) -> Result<(), BackendError> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(|e| map(&e))?;
    let driver = tokio::spawn(connection);
    let out = client.batch_execute(sql).await.map_err(|e| map(&e));
    drop(client);
    // The connection ends once the client is gone; waiting for it closes the session cleanly.
    let _ = driver.await;
    out
}

/// Runs `sql` on `url` from a thread and a runtime of its own: usable from `Drop`, inside or
/// outside the caller's runtime (whose worker may be the one being blocked).
fn execute_blocking(url: &str, sql: &str) -> Result<(), BackendError> {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| BackendError::Other(format!("cannot start a runtime: {e}")))?
            .block_on(execute(&url, &sql))
    })
    .join()
    .unwrap_or_else(|_| Err(BackendError::Other("the cleanup thread panicked".into())))
}

/// A database of its own for one test, `bulkhead_test_<uuid>`, dropped (`WITH (FORCE)`, so
/// connections still open in pools are closed) when this is dropped.
pub struct TestDb {
    admin_url: String,
    name: String,
    url: String,
}

impl std::fmt::Debug for TestDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URLs may carry passwords.
        f.debug_struct("TestDb")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl TestDb {
    /// A fresh database with Bulkhead's schema ([`PostgresStore::migrate`] run as the admin
    /// URL's user, who then owns the tables).
    pub async fn create(admin_url: &str) -> Result<Self, BackendError> {
        let db = Self::empty(admin_url).await?;
        // On failure `db` is dropped here, and the database with it.
        PostgresStore::migrate(&db.url).await?;
        Ok(db)
    }

    /// A fresh, empty database: not migrated.
    pub async fn empty(admin_url: &str) -> Result<Self, BackendError> {
        let name = format!("bulkhead_test_{}", uuid::Uuid::new_v4().simple());
        execute(admin_url, &format!("CREATE DATABASE {name}")).await?;
        let url = rewrite_url(admin_url, &name, None, None);
        Ok(Self {
            admin_url: admin_url.to_owned(),
            name,
            url,
        })
    }

    /// The database's URL, as the admin URL's user.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The admin URL the database was created with.
    pub fn admin_url(&self) -> &str {
        &self.admin_url
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(e) = execute_blocking(&self.admin_url, &sql) {
            eprintln!("test cleanup failed ({sql}): {e}");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::rewrite_url;

    #[test]
    fn rewrites_both_url_forms() {
        let u = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable";
        assert_eq!(
            rewrite_url(u, "t1", None, None),
            "postgres://postgres@127.0.0.1:5432/t1?sslmode=disable"
        );
        assert_eq!(
            rewrite_url(u, "t1", Some(("app", "pw")), Some(("127.0.0.1", 7))),
            "postgres://app:pw@127.0.0.1:7/t1?sslmode=disable"
        );
        assert_eq!(
            rewrite_url("postgresql://h", "t1", None, None),
            "postgresql://h/t1"
        );
        assert_eq!(
            rewrite_url("host=h port=5 user=u", "t1", None, Some(("127.0.0.1", 7))),
            "user=u dbname=t1 host=127.0.0.1 port=7"
        );
        let parsed: tokio_postgres::Config = rewrite_url(u, "t1", None, None).parse().unwrap();
        assert_eq!(parsed.get_dbname(), Some("t1"));
    }
}
