//! The second wall by itself: PostgreSQL's row-level security, seen through the application
//! role with Bulkhead's own filters taken away (raw SQL with no `tenant_id` condition), and the
//! checks that keep tenant traffic on a role that cannot bypass it.
//!
//! Each test has its own fresh database; see `common::test_url` for when they run.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

mod common;

use bulkhead_core::{CollectionName, Role, TenantContext, TenantId};
use bulkhead_store::contract::Env;
use bulkhead_store::port::RecordBackend;
use bulkhead_store::service::Idempotency;
use bulkhead_store::{BackendError, StoreError};
use bulkhead_store_postgres::{APP_ROLE, PostgresStore};
use common::{Pg, RoleDb, TestDb, TestRole, test_url};
use serde_json::json;
use tokio_postgres::error::SqlState;

const TENANT_TABLES: [&str; 6] = [
    "collections",
    "records",
    "record_index",
    "idempotency",
    "tenant_usage",
    "policies",
];

fn users() -> CollectionName {
    CollectionName::parse("users").unwrap()
}

/// Onboards a tenant with a `users` collection holding one record (with an index entry and an
/// idempotency entry) and a policy version, so that it has rows in every tenant-owned table.
async fn tenant_with_rows<const P: usize>(env: &Env<Pg<P>>) -> TenantContext {
    let ctx = env.tenant(&[Role::Admin]).await;
    let h = env.store.tenant(&ctx).await.unwrap();
    h.put_collection(
        &users(),
        json!({"type": "object", "properties": {"email": {"type": "string"}}}),
        vec!["email".into()],
    )
    .await
    .unwrap();
    h.create_record(
        &users(),
        json!({"email": "someone@x.example"}),
        Some(Idempotency {
            key: "k",
            body_digest: [1; 32],
        }),
    )
    .await
    .unwrap();
    h.put_policy(
        "// no tenant policies yet".into(),
        &bulkhead_core::Subject::parse("admin").unwrap(),
        None,
    )
    .await
    .unwrap();
    ctx
}

/// How many rows of `table` belong to `tenant`, as the superuser sees them (no RLS).
async fn owned_rows<const P: usize>(env: &Env<Pg<P>>, table: &str, tenant: TenantId) -> i64 {
    env.harness
        .admin
        .query_one(
            &format!("SELECT count(*) FROM {table} WHERE tenant_id = $1"),
            &[&tenant.as_uuid()],
        )
        .await
        .unwrap()
        .get(0)
}

/// One row for `tenant` in `table`, with made-up values; `$1` is the tenant.
fn insert_sql(table: &str) -> &'static str {
    match table {
        "collections" => {
            "INSERT INTO collections (tenant_id, name, version, definition, created_at, updated_at)
             VALUES ($1, 'planted', 1, '\\x00', 0, 0)"
        }
        "records" => {
            "INSERT INTO records (tenant_id, collection, id, version, data, created_at, updated_at)
             VALUES ($1, 'users', gen_random_uuid(), 1, '\\x00', 0, 0)"
        }
        "record_index" => {
            "INSERT INTO record_index (tenant_id, collection, token, record_id)
             VALUES ($1, 'users', '\\x00', gen_random_uuid())"
        }
        "idempotency" => {
            "INSERT INTO idempotency (tenant_id, key, request, response, expires_at)
             VALUES ($1, '\\x01', '\\x00', '\\x00', 0)"
        }
        // The tenant already has its usage row: an upsert, as the usage trigger writes it.
        "tenant_usage" => {
            "INSERT INTO tenant_usage (tenant_id, shard, records, bytes) VALUES ($1, 0, 0, 0)
             ON CONFLICT (tenant_id, shard) DO UPDATE SET records = tenant_usage.records"
        }
        "policies" => {
            "INSERT INTO policies (tenant_id, version, sealed, created_at)
             VALUES ($1, 1000, '\\x00', 0)"
        }
        other => panic!("no insert for `{other}`"),
    }
}

fn assert_rls_violation(e: &tokio_postgres::Error, what: &str) {
    assert_eq!(
        e.code(),
        Some(&SqlState::INSUFFICIENT_PRIVILEGE),
        "{what}: expected a row-level security violation, got {e:?}"
    );
}

/// Starts a transaction on `c` with `tenant` set the way the adapter sets it.
async fn begin_as(c: &tokio_postgres::Client, tenant: TenantId) {
    c.batch_execute("BEGIN").await.unwrap();
    c.execute(
        "SELECT set_config('bulkhead.tenant_id', $1, true)",
        &[&tenant.to_string()],
    )
    .await
    .unwrap();
}

async fn current_user(c: &tokio_postgres::Client) -> String {
    c.query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0)
}

async fn tenant_setting(c: &tokio_postgres::Client) -> Option<String> {
    c.query_one("SELECT current_setting('bulkhead.tenant_id', true)", &[])
        .await
        .unwrap()
        .get(0)
}

async fn backend_pid(c: &tokio_postgres::Client) -> i32 {
    c.query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_tenant_set_only_its_rows_are_visible() {
    if test_url().is_none() {
        return;
    }
    let env = Env::<Pg<2>>::new().await;
    let a = tenant_with_rows(&env).await.tenant();
    let b = tenant_with_rows(&env).await.tenant();
    let c = env.harness.store.unscoped_client().await.unwrap();
    assert_eq!(current_user(&c).await, APP_ROLE);
    for (me, other) in [(a, b), (b, a)] {
        begin_as(&c, me).await;
        for table in TENANT_TABLES {
            // No `WHERE tenant_id`: only the policy filters.
            let seen: Vec<uuid::Uuid> = c
                .query(&format!("SELECT tenant_id FROM {table}"), &[])
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            // Positive twin: every row of mine, and only those.
            assert!(!seen.is_empty(), "{table}: my rows are visible");
            assert!(seen.iter().all(|t| *t == me.as_uuid()), "{table}: {seen:?}");
            assert_eq!(
                i64::try_from(seen.len()).unwrap(),
                owned_rows(&env, table, me).await,
                "{table}: all my rows"
            );
            assert!(owned_rows(&env, table, other).await > 0);
            // Asking for the other tenant's rows by name finds nothing either.
            let theirs: i64 = c
                .query_one(
                    &format!("SELECT count(*) FROM {table} WHERE tenant_id = $1"),
                    &[&other.as_uuid()],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(theirs, 0, "{table}: the other tenant's rows");
        }
        c.batch_execute("COMMIT").await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_tenant_set_writes_for_another_tenant_are_rejected() {
    if test_url().is_none() {
        return;
    }
    let env = Env::<Pg<2>>::new().await;
    let a = tenant_with_rows(&env).await.tenant();
    let b = tenant_with_rows(&env).await.tenant();
    let c = env.harness.store.unscoped_client().await.unwrap();
    for table in TENANT_TABLES {
        // Positive twin: as A, a row for A is accepted.
        begin_as(&c, a).await;
        c.execute(insert_sql(table), &[&a.as_uuid()]).await.unwrap();
        c.batch_execute("ROLLBACK").await.unwrap();

        begin_as(&c, a).await;
        let e = c
            .execute(insert_sql(table), &[&b.as_uuid()])
            .await
            .unwrap_err();
        assert_rls_violation(&e, &format!("{table}: insert for B as A"));
        c.batch_execute("ROLLBACK").await.unwrap();

        // Moving one of A's rows to B is refused too (the policy's WITH CHECK).
        begin_as(&c, a).await;
        let e = c
            .execute(
                &format!("UPDATE {table} SET tenant_id = $1"),
                &[&b.as_uuid()],
            )
            .await
            .unwrap_err();
        assert_rls_violation(&e, &format!("{table}: update A's rows to B"));
        c.batch_execute("ROLLBACK").await.unwrap();

        // And B's rows cannot be changed or deleted from A's transaction: they are not there.
        begin_as(&c, a).await;
        let deleted = c
            .execute(
                &format!("DELETE FROM {table} WHERE tenant_id = $1"),
                &[&b.as_uuid()],
            )
            .await
            .unwrap();
        assert_eq!(deleted, 0, "{table}: delete B's rows as A");
        c.batch_execute("ROLLBACK").await.unwrap();
        assert!(owned_rows(&env, table, b).await > 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_tenant_set_tables_read_empty_and_refuse_writes() {
    if test_url().is_none() {
        return;
    }
    let env = Env::<Pg<2>>::new().await;
    let a = tenant_with_rows(&env).await.tenant();
    let c = env.harness.store.unscoped_client().await.unwrap();
    assert_eq!(tenant_setting(&c).await.unwrap_or_default(), "");
    for table in TENANT_TABLES {
        let n: i64 = c
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "{table} reads empty with no tenant set");
        // Positive twin: the rows are there.
        assert!(owned_rows(&env, table, a).await > 0, "{table}");
        let e = c
            .execute(insert_sql(table), &[&a.as_uuid()])
            .await
            .unwrap_err();
        assert_rls_violation(&e, &format!("{table}: insert with no tenant set"));
        let updated = c
            .execute(&format!("UPDATE {table} SET tenant_id = tenant_id"), &[])
            .await;
        if table == "policies" {
            // Policy versions are append-only: the application role may not update them at all.
            assert_rls_violation(&updated.unwrap_err(), "policies: update");
        } else {
            assert_eq!(updated.unwrap(), 0, "{table}: update with no tenant set");
        }
    }
    // The same holds in an explicit transaction that set nothing, and with the setting
    // emptied (as it reads after an earlier transaction-local set).
    c.batch_execute("BEGIN; SELECT set_config('bulkhead.tenant_id', '', true)")
        .await
        .unwrap();
    for table in TENANT_TABLES {
        let n: i64 = c
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "{table} reads empty with an empty tenant setting");
    }
    c.batch_execute("COMMIT").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_pooled_connection_carries_no_tenant() {
    if test_url().is_none() {
        return;
    }
    // One connection: every operation below runs on it.
    let env = Env::<Pg<1>>::new().await;
    let ctx = tenant_with_rows(&env).await;
    let a = ctx.tenant();
    let pid = {
        let c = env.harness.store.unscoped_client().await.unwrap();
        backend_pid(&c).await
    };
    // A tenant-plane write and read (single statements that set the tenant themselves) and a
    // list (a pipelined transaction) on the pooled connection.
    let h = env.store.tenant(&ctx).await.unwrap();
    let created = h
        .create_record(&users(), json!({"email": "two@x.example"}), None)
        .await
        .unwrap();
    h.get_record(&users(), created.record.id).await.unwrap();
    assert_eq!(
        h.query(&users(), &[], None, 10).await.unwrap().items.len(),
        2
    );

    let c = env.harness.store.unscoped_client().await.unwrap();
    assert_eq!(backend_pid(&c).await, pid, "the same connection was reused");
    let setting = tenant_setting(&c).await;
    assert!(
        setting.as_deref().is_none_or(str::is_empty),
        "tenant setting leaked: {setting:?}"
    );
    for table in TENANT_TABLES {
        let n: i64 = c
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "{table} reads empty after the tenant's transaction");
    }
    // Positive twin: on this same connection, with A set, A's records are there.
    begin_as(&c, a).await;
    let n: i64 = c
        .query_one("SELECT count(*) FROM records", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    c.batch_execute("COMMIT").await.unwrap();
    drop(c);
    env.harness.store.ping().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_tenant_transaction_leaves_the_connection_clean() {
    if test_url().is_none() {
        return;
    }
    let env = Env::<Pg<1>>::new().await;
    let ctx = tenant_with_rows(&env).await;
    let pid = {
        let c = env.harness.store.unscoped_client().await.unwrap();
        backend_pid(&c).await
    };
    // Make every record insert fail inside the pipelined transaction.
    env.harness
        .admin
        .batch_execute(
            "CREATE FUNCTION planted_failure() RETURNS trigger LANGUAGE plpgsql
                AS $$ BEGIN RAISE EXCEPTION 'planted failure'; END $$;
             CREATE TRIGGER planted_failure BEFORE INSERT ON records
                FOR EACH ROW EXECUTE FUNCTION planted_failure();",
        )
        .await
        .unwrap();
    let h = env.store.tenant(&ctx).await.unwrap();
    match h
        .create_record(&users(), json!({"email": "x@x.example"}), None)
        .await
    {
        Err(StoreError::Internal(m)) => assert!(m.contains("planted failure"), "{m}"),
        other => panic!("expected the planted failure, got {other:?}"),
    }
    // The statement's failure was an ordinary SQL error: the connection was kept, and the
    // pipeline's COMMIT ended the failed transaction, tenant setting and all.
    let c = env.harness.store.unscoped_client().await.unwrap();
    assert_eq!(backend_pid(&c).await, pid, "the same connection was reused");
    let setting = tenant_setting(&c).await;
    assert!(setting.as_deref().is_none_or(str::is_empty), "{setting:?}");
    let n: i64 = c
        .query_one("SELECT count(*) FROM records", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    drop(c);
    // Positive twin: once the failure is gone, the same connection serves writes again.
    env.harness
        .admin
        .batch_execute("DROP TRIGGER planted_failure ON records")
        .await
        .unwrap();
    h.create_record(&users(), json!({"email": "x@x.example"}), None)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_connections_are_replaced_without_a_restart() {
    if test_url().is_none() {
        return;
    }
    const POOL: usize = 3;
    let env = Env::<Pg<POOL>>::new().await;
    let ctx = tenant_with_rows(&env).await;
    let h = env.store.tenant(&ctx).await.unwrap();
    let rec = h.query(&users(), &[], None, 10).await.unwrap().items;
    assert_eq!(rec.len(), 1);
    // What a PostgreSQL restart does to the pool: every server session ends (57P01).
    let killed: i64 = env
        .harness
        .admin
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
              WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(killed >= 1);
    // Each broken connection costs at most one failed request (503, retry), then is gone.
    let mut served = false;
    for _ in 0..=POOL {
        match env.harness.store.ping().await {
            Ok(()) => {
                served = true;
                break;
            }
            Err(BackendError::Unavailable(_)) => {}
            Err(e) => panic!("a broken connection must read as unavailable, got {e:?}"),
        }
    }
    assert!(served, "the pool did not replace its broken connections");
    // The whole path works again: new connections, narrowed to the app role and checked.
    let mut read = None;
    for _ in 0..=POOL {
        match h.get_record(&users(), rec[0].id).await {
            Ok(r) => {
                read = Some(r);
                break;
            }
            Err(StoreError::Unavailable(_)) => {}
            Err(e) => panic!("expected the record or unavailable, got {e:?}"),
        }
    }
    assert_eq!(read.as_ref(), Some(&rec[0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_unavailable() {
    if test_url().is_none() {
        return;
    }
    // A port nobody listens on: connection refused, which is "retry later", not a bug.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    match PostgresStore::connect(&url, 1).await {
        Err(BackendError::Unavailable(_)) => {}
        other => panic!("expected unavailable, got {other:?}"),
    }
}

fn assert_refused(r: Result<PostgresStore, BackendError>, role: &str, why: &str) {
    match r {
        Err(BackendError::Other(m)) => {
            assert!(
                m.contains(&format!(
                    "refusing to serve tenant traffic as role `{role}`: \
                     it can bypass row-level security"
                )) && m.contains(why),
                "{m}"
            );
        }
        Err(e) => panic!("expected a refusal for `{role}`, got {e:?}"),
        Ok(_) => panic!("role `{role}` ({why}) was accepted"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_narrows_a_superuser_url_to_the_app_role() {
    let Some(admin) = test_url() else { return };
    let db = TestDb::migrated(&admin).await;
    // The URL's user is a superuser and the tables' owner: as it is, refused.
    let superuser = common::client(&db.url).await;
    let me = current_user(&superuser).await;
    assert_refused(
        PostgresStore::connect_app(&db.url, 1).await,
        &me,
        "superuser",
    );
    // Positive twin: narrowed with `SET ROLE`, accepted, and serving as `bulkhead_app`.
    let store = PostgresStore::connect(&db.url, 1).await.unwrap();
    let c = store.unscoped_client().await.unwrap();
    assert_eq!(current_user(&c).await, APP_ROLE);
    let attrs = c
        .query_one(
            "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .unwrap();
    assert!(!attrs.get::<_, bool>(0) && !attrs.get::<_, bool>(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_refuses_a_bypassrls_role() {
    let Some(admin) = test_url() else { return };
    let f = RoleDb::create(
        &admin,
        "bypass",
        "NOSUPERUSER BYPASSRLS IN ROLE bulkhead_app",
    )
    .await;
    let role = &f.role;
    assert_refused(
        PostgresStore::connect_app(&f.db.url_as(role), 1).await,
        &role.name,
        "BYPASSRLS",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_refuses_a_table_owner() {
    let Some(admin) = test_url() else { return };
    let f = RoleDb::create(
        &admin,
        "owner",
        "NOSUPERUSER NOBYPASSRLS IN ROLE bulkhead_app",
    )
    .await;
    let role = &f.role;
    common::client(&f.db.url)
        .await
        .batch_execute(&format!("ALTER TABLE idempotency OWNER TO {}", role.name))
        .await
        .unwrap();
    assert_refused(
        PostgresStore::connect_app(&f.db.url_as(role), 1).await,
        &role.name,
        "owner of table `idempotency`",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_accepts_a_login_role_in_the_app_role() {
    let Some(admin) = test_url() else { return };
    let f = RoleDb::create(
        &admin,
        "app",
        "NOSUPERUSER NOBYPASSRLS IN ROLE bulkhead_app",
    )
    .await;
    let role = &f.role;
    let store = PostgresStore::connect_app(&f.db.url_as(role), 1)
        .await
        .unwrap();
    store.ping().await.unwrap();
    let c = store.unscoped_client().await.unwrap();
    assert_eq!(current_user(&c).await, role.name);
    // Its privileges come from `bulkhead_app`, and RLS applies to it: with no tenant, empty.
    let n: i64 = c
        .query_one("SELECT count(*) FROM records", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_refuses_a_database_that_is_not_migrated() {
    let Some(admin) = test_url() else { return };
    let db = TestDb::empty(&admin).await;
    match PostgresStore::connect_app(&db.url, 1).await {
        // The superuser check comes first; as the app role it is the missing schema.
        Err(BackendError::Other(m)) => assert!(m.contains("superuser"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let role = TestRole::create(&admin, "early", "NOSUPERUSER NOBYPASSRLS").await;
    drop(db);
    let db = TestDb::empty(&admin).await;
    match PostgresStore::connect_app(&db.url_as(&role), 1).await {
        Err(BackendError::Other(m)) => assert!(m.contains("run migrations first"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_idempotent_and_serialized() {
    let Some(admin) = test_url() else { return };
    let db = TestDb::empty(&admin).await;
    // Several instances starting at once: one migrates, the others find it done.
    let runs = (0..4).map(|_| PostgresStore::migrate(&db.url));
    for r in futures::future::join_all(runs).await {
        r.unwrap();
    }
    let c = common::client(&db.url).await;
    let versions: Vec<i64> = c
        .query(
            "SELECT version FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    // Every migration file ran, once: `NNNN_name.sql` is version NNNN.
    let mut files: Vec<i64> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".sql"))
        .map(|n| n[..4].parse().unwrap())
        .collect();
    files.sort_unstable();
    assert!(files.len() >= 2, "migration files: {files:?}");
    assert_eq!(versions, files);
    // Every tenant-owned table has RLS enabled and forced, and `bulkhead_app` owns nothing.
    let audit_tables = ["audit_pending", "audit_entries", "audit_checkpoints"];
    for table in TENANT_TABLES.into_iter().chain(audit_tables) {
        let row = c
            .query_one(
                "SELECT relrowsecurity, relforcerowsecurity, pg_get_userbyid(relowner)::text
                   FROM pg_class WHERE oid = to_regclass($1)",
                &[&table],
            )
            .await
            .unwrap();
        assert!(row.get::<_, bool>(0) && row.get::<_, bool>(1), "{table}");
        assert_ne!(row.get::<_, String>(2), APP_ROLE, "{table}");
    }
    PostgresStore::connect(&db.url, 1).await.unwrap();
}

/// The audit tables of tenant logs (migration 0004) behind the same wall, and append-only for
/// the application role.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_tables_are_under_row_level_security() {
    if test_url().is_none() {
        return;
    }
    const AUDIT_TABLES: [&str; 3] = ["audit_pending", "audit_entries", "audit_checkpoints"];
    let env = Env::<Pg<2>>::new().await;
    let mut tenants = Vec::new();
    for _ in 0..2 {
        let ctx = tenant_with_rows(&env).await;
        // Entries placed and checkpointed, and one more left pending: rows in every table.
        let scope = env.store.tenant_audit(&ctx);
        env.store.audit().checkpoint(&scope).await.unwrap().unwrap();
        env.store
            .tenant(&ctx)
            .await
            .unwrap()
            .list_collections()
            .await
            .unwrap();
        tenants.push(ctx.tenant());
    }
    let (a, b) = (tenants[0], tenants[1]);
    let insert = |table: &str| {
        match table {
        "audit_pending" => "INSERT INTO audit_pending (tenant_id, body) VALUES ($1, '\\x00')",
        "audit_entries" => {
            "INSERT INTO audit_entries (tenant_id, seq, body, leaf) VALUES ($1, 1000, '\\x00', '\\x00')"
        }
        _ => {
            "INSERT INTO audit_checkpoints (tenant_id, size, root, time_us, key_id, signature, frontier)
             VALUES ($1, 1000, '\\x00', 0, 'k', '\\x00', '\\x00')"
        }
    }
    };
    let c = env.harness.store.unscoped_client().await.unwrap();
    for table in AUDIT_TABLES {
        // With A set: A's rows, all of them, and only them.
        begin_as(&c, a).await;
        let seen: Vec<uuid::Uuid> = c
            .query(&format!("SELECT tenant_id FROM {table}"), &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert!(!seen.is_empty(), "{table}: my rows are visible");
        assert!(seen.iter().all(|t| *t == a.as_uuid()), "{table}: {seen:?}");
        assert_eq!(
            i64::try_from(seen.len()).unwrap(),
            owned_rows(&env, table, a).await
        );
        assert!(owned_rows(&env, table, b).await > 0);
        c.batch_execute("COMMIT").await.unwrap();
        // Positive twin: a row for A as A is accepted; for B as A it is refused.
        begin_as(&c, a).await;
        c.execute(insert(table), &[&a.as_uuid()]).await.unwrap();
        c.batch_execute("ROLLBACK").await.unwrap();
        begin_as(&c, a).await;
        let e = c.execute(insert(table), &[&b.as_uuid()]).await.unwrap_err();
        assert_rls_violation(&e, &format!("{table}: insert for B as A"));
        c.batch_execute("ROLLBACK").await.unwrap();
        // No tenant set: nothing visible, nothing accepted.
        let n: i64 = c
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "{table} reads empty with no tenant set");
        let e = c.execute(insert(table), &[&a.as_uuid()]).await.unwrap_err();
        assert_rls_violation(&e, &format!("{table}: insert with no tenant set"));
    }
    // Append-only for the application role, even on its own tenant's rows.
    for (sql, what) in [
        ("UPDATE audit_entries SET body = body", "update entries"),
        (
            "UPDATE audit_checkpoints SET signature = signature",
            "update checkpoints",
        ),
        ("DELETE FROM audit_checkpoints", "delete checkpoints"),
        (
            "UPDATE audit_operator_entries SET body = body",
            "update operator entries",
        ),
        (
            "DELETE FROM audit_operator_checkpoints",
            "delete operator checkpoints",
        ),
    ] {
        begin_as(&c, a).await;
        let e = c.execute(sql, &[]).await.unwrap_err();
        assert_eq!(
            e.code(),
            Some(&SqlState::INSUFFICIENT_PRIVILEGE),
            "{what}: {e:?}"
        );
        c.batch_execute("ROLLBACK").await.unwrap();
    }
}
