-- Bulkhead's PostgreSQL schema, version 1. Runs as the migrating user, who owns every table;
-- tenant traffic runs as `bulkhead_app`, which owns nothing and cannot bypass row-level security.
--
-- INVARIANT: `tenant_id` leads the primary key and every index of each tenant-owned table, and no
-- foreign key or unique constraint spans tenants, so the tenant-owned tables can be distributed
-- by `tenant_id` (Citus-style). Times are `bigint` microseconds since the Unix epoch (UTC), as
-- in the SQLite adapter.

-- ---- the application role ---------------------------------------------------------------------

-- Roles are cluster-wide while this migration runs per database: two databases migrating at
-- once may both find the role missing, so losing that race is not an error.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'bulkhead_app') THEN
        BEGIN
            CREATE ROLE bulkhead_app NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END;
    END IF;
    -- A migrating user that is not a superuser needs membership to `SET ROLE bulkhead_app`.
    -- Membership this way round gives `bulkhead_app` nothing of the owner's.
    IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
       AND NOT pg_has_role(current_user, 'bulkhead_app', 'MEMBER') THEN
        EXECUTE format('GRANT bulkhead_app TO %I', current_user);
    END IF;
END
$$;

-- ---- platform (registry) tables ---------------------------------------------------------------
--
-- These are read before any tenant context exists (to authenticate a request, the tenant's
-- status and public keys are needed), so they have NO row-level security. They hold no record
-- data: tenants' key material in them is wrapped by the master key. In a distributed setup they
-- are reference tables (replicated), which is why `tenants_live_name` may span tenants.

CREATE TABLE settings (
    name  text PRIMARY KEY,
    value bytea NOT NULL
);

CREATE TABLE tenants (
    tenant_id    uuid NOT NULL,
    name         text NOT NULL,
    tier         text NOT NULL,
    status       text NOT NULL,
    placement    text NOT NULL,
    wrapped_root bytea,
    created_at   bigint NOT NULL,
    PRIMARY KEY (tenant_id)
);
-- A name is unique among tenants that are not deleted; a deleted tenant's name can be reused.
CREATE UNIQUE INDEX tenants_live_name ON tenants (name) WHERE status <> 'deleted';

CREATE TABLE signing_keys (
    tenant_id       uuid NOT NULL,
    kid             text NOT NULL,
    alg             text NOT NULL,
    public_key      bytea NOT NULL,
    wrapped_private bytea NOT NULL,
    created_at      bigint NOT NULL,
    active          boolean NOT NULL,
    PRIMARY KEY (tenant_id, kid)
);

-- ---- tenant-owned tables ----------------------------------------------------------------------

CREATE TABLE collections (
    tenant_id  uuid NOT NULL,
    name       text NOT NULL,
    version    bigint NOT NULL,
    definition bytea NOT NULL,
    created_at bigint NOT NULL,
    updated_at bigint NOT NULL,
    PRIMARY KEY (tenant_id, name)
);

CREATE TABLE records (
    tenant_id  uuid NOT NULL,
    collection text NOT NULL,
    id         uuid NOT NULL,
    version    bigint NOT NULL,
    data       bytea NOT NULL,
    created_at bigint NOT NULL,
    updated_at bigint NOT NULL,
    PRIMARY KEY (tenant_id, collection, id)
);

CREATE TABLE record_index (
    tenant_id  uuid NOT NULL,
    collection text NOT NULL,
    token      bytea NOT NULL,
    record_id  uuid NOT NULL,
    PRIMARY KEY (tenant_id, collection, token, record_id)
);
CREATE INDEX record_index_by_record ON record_index (tenant_id, collection, record_id);

CREATE TABLE idempotency (
    tenant_id  uuid NOT NULL,
    key        bytea NOT NULL,
    request    bytea NOT NULL,
    response   bytea NOT NULL,
    expires_at bigint NOT NULL,
    PRIMARY KEY (tenant_id, key)
);

-- ---- the second wall: row-level security ------------------------------------------------------
--
-- INVARIANT: a tenant-owned row is visible and writable only inside a transaction whose
-- `bulkhead.tenant_id` setting is that row's tenant. With no tenant set the setting is NULL or
-- '' (after an earlier transaction-local set), NULLIF turns both into NULL, and `tenant_id = NULL`
-- is never true: the tables read as empty and every write is refused (fail closed). A malformed
-- setting fails the cast: an error, never a wider view. FORCE applies the policy to the owner too.

ALTER TABLE collections ENABLE ROW LEVEL SECURITY;
ALTER TABLE collections FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON collections
    USING (tenant_id = NULLIF(current_setting('bulkhead.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('bulkhead.tenant_id', true), '')::uuid);

ALTER TABLE records ENABLE ROW LEVEL SECURITY;
ALTER TABLE records FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON records
    USING (tenant_id = NULLIF(current_setting('bulkhead.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('bulkhead.tenant_id', true), '')::uuid);

ALTER TABLE record_index ENABLE ROW LEVEL SECURITY;
ALTER TABLE record_index FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON record_index
    USING (tenant_id = NULLIF(current_setting('bulkhead.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('bulkhead.tenant_id', true), '')::uuid);

ALTER TABLE idempotency ENABLE ROW LEVEL SECURITY;
ALTER TABLE idempotency FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON idempotency
    USING (tenant_id = NULLIF(current_setting('bulkhead.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('bulkhead.tenant_id', true), '')::uuid);

-- ---- multi-step writes ------------------------------------------------------------------------
--
-- Each runs as one statement inside the caller's pipelined transaction, after the caller's
-- `set_config('bulkhead.tenant_id', …, true)`. They are SECURITY INVOKER (the default, spelled
-- out): their statements run as `bulkhead_app`, under the policies above.
--
-- INVARIANT: every statement in them also filters `tenant_id = p_tenant` itself (defence in
-- depth: the application's scoping and row-level security each hold on their own).
--
-- Locks: a write that depends on a collection's version takes the collection row FOR SHARE, so
-- a concurrent definition change (an UPDATE of that row) is ordered before or after it, never
-- in between: the version check and the write see the same definition, as in SQLite, where
-- writes are serial.

CREATE FUNCTION bulkhead_insert_record(
    p_tenant uuid,
    p_collection text,
    p_id uuid,
    p_version bigint,
    p_data bytea,
    p_created_at bigint,
    p_updated_at bigint,
    p_collection_version bigint,
    p_tokens bytea[],
    p_idem_key bytea,
    p_idem_request bytea,
    p_idem_response bytea,
    p_idem_expires_at bigint,
    OUT outcome text,
    OUT replay bytea
)
LANGUAGE plpgsql
SECURITY INVOKER
AS $$
DECLARE
    v_collection bigint;
    v_request bytea;
    v_response bytea;
    v_expires bigint;
BEGIN
    SELECT c.version INTO v_collection
      FROM collections c
     WHERE c.tenant_id = p_tenant AND c.name = p_collection
       FOR SHARE;
    IF v_collection IS DISTINCT FROM p_collection_version THEN
        outcome := 'stale_collection';
        RETURN;
    END IF;

    IF p_idem_key IS NOT NULL THEN
        LOOP
            -- Claim the key. A concurrent claim of the same key waits here for the other
            -- transaction, then sees its row: exactly one of them inserts a record.
            INSERT INTO idempotency (tenant_id, key, request, response, expires_at)
            VALUES (p_tenant, p_idem_key, p_idem_request, p_idem_response, p_idem_expires_at)
            ON CONFLICT (tenant_id, key) DO NOTHING;
            EXIT WHEN FOUND;

            SELECT i.request, i.response, i.expires_at INTO v_request, v_response, v_expires
              FROM idempotency i
             WHERE i.tenant_id = p_tenant AND i.key = p_idem_key
               FOR UPDATE;
            IF FOUND THEN
                IF v_expires > p_created_at THEN
                    IF v_request = p_idem_request THEN
                        outcome := 'replayed';
                        replay := v_response;
                    ELSE
                        outcome := 'key_reused';
                    END IF;
                    RETURN;
                END IF;
                -- The earlier use expired: the key is free again.
                UPDATE idempotency
                   SET request = p_idem_request, response = p_idem_response,
                       expires_at = p_idem_expires_at
                 WHERE tenant_id = p_tenant AND key = p_idem_key;
                EXIT;
            END IF;
            -- The conflicting row vanished (purged) between the two statements: claim again.
        END LOOP;
    END IF;

    INSERT INTO records (tenant_id, collection, id, version, data, created_at, updated_at)
    VALUES (p_tenant, p_collection, p_id, p_version, p_data, p_created_at, p_updated_at);
    INSERT INTO record_index (tenant_id, collection, token, record_id)
    SELECT p_tenant, p_collection, t.token, p_id
      FROM unnest(p_tokens) AS t(token)
    ON CONFLICT DO NOTHING;
    outcome := 'inserted';
END
$$;

CREATE FUNCTION bulkhead_update_record(
    p_tenant uuid,
    p_collection text,
    p_id uuid,
    p_version bigint,
    p_data bytea,
    p_updated_at bigint,
    p_expected bigint,
    p_collection_version bigint,
    p_tokens bytea[],
    OUT outcome text,
    OUT cur_version bigint,
    OUT cur_created_at bigint
)
LANGUAGE plpgsql
SECURITY INVOKER
AS $$
DECLARE
    v_collection bigint;
BEGIN
    SELECT r.version, r.created_at INTO cur_version, cur_created_at
      FROM records r
     WHERE r.tenant_id = p_tenant AND r.collection = p_collection AND r.id = p_id
       FOR UPDATE;
    IF NOT FOUND THEN
        outcome := 'not_found';
        RETURN;
    END IF;
    IF cur_version <> p_expected THEN
        outcome := 'version_mismatch';
        RETURN;
    END IF;
    SELECT c.version INTO v_collection
      FROM collections c
     WHERE c.tenant_id = p_tenant AND c.name = p_collection
       FOR SHARE;
    IF v_collection IS DISTINCT FROM p_collection_version THEN
        outcome := 'stale_collection';
        RETURN;
    END IF;
    UPDATE records
       SET version = p_version, data = p_data, updated_at = p_updated_at
     WHERE tenant_id = p_tenant AND collection = p_collection AND id = p_id;
    DELETE FROM record_index
     WHERE tenant_id = p_tenant AND collection = p_collection AND record_id = p_id;
    INSERT INTO record_index (tenant_id, collection, token, record_id)
    SELECT p_tenant, p_collection, t.token, p_id
      FROM unnest(p_tokens) AS t(token)
    ON CONFLICT DO NOTHING;
    outcome := 'written';
END
$$;

CREATE FUNCTION bulkhead_delete_record(
    p_tenant uuid,
    p_collection text,
    p_id uuid,
    p_expected bigint,
    OUT outcome text,
    OUT cur_version bigint,
    OUT cur_created_at bigint
)
LANGUAGE plpgsql
SECURITY INVOKER
AS $$
BEGIN
    SELECT r.version, r.created_at INTO cur_version, cur_created_at
      FROM records r
     WHERE r.tenant_id = p_tenant AND r.collection = p_collection AND r.id = p_id
       FOR UPDATE;
    IF NOT FOUND THEN
        outcome := 'not_found';
        RETURN;
    END IF;
    IF p_expected IS NOT NULL AND cur_version <> p_expected THEN
        outcome := 'version_mismatch';
        RETURN;
    END IF;
    DELETE FROM records
     WHERE tenant_id = p_tenant AND collection = p_collection AND id = p_id;
    DELETE FROM record_index
     WHERE tenant_id = p_tenant AND collection = p_collection AND record_id = p_id;
    outcome := 'written';
END
$$;

-- `p_ids` are the records to re-index; `p_token_ids[i]` is the record `p_tokens[i]` belongs to.
CREATE FUNCTION bulkhead_reindex(
    p_tenant uuid,
    p_collection text,
    p_collection_version bigint,
    p_ids uuid[],
    p_token_ids uuid[],
    p_tokens bytea[]
)
RETURNS boolean
LANGUAGE plpgsql
SECURITY INVOKER
AS $$
DECLARE
    v_collection bigint;
BEGIN
    SELECT c.version INTO v_collection
      FROM collections c
     WHERE c.tenant_id = p_tenant AND c.name = p_collection
       FOR SHARE;
    IF v_collection IS DISTINCT FROM p_collection_version THEN
        RETURN false;
    END IF;
    -- Hold the records still (in id order, so two re-indexes cannot deadlock): a record
    -- deleted meanwhile gets no index entries, one deleted later loses them with it.
    PERFORM 1
       FROM records r
      WHERE r.tenant_id = p_tenant AND r.collection = p_collection AND r.id = ANY (p_ids)
      ORDER BY r.id
        FOR SHARE;
    DELETE FROM record_index
     WHERE tenant_id = p_tenant AND collection = p_collection AND record_id = ANY (p_ids);
    INSERT INTO record_index (tenant_id, collection, token, record_id)
    SELECT p_tenant, p_collection, t.token, t.record_id
      FROM unnest(p_token_ids, p_tokens) AS t(record_id, token)
     WHERE EXISTS (
            SELECT 1 FROM records r
             WHERE r.tenant_id = p_tenant AND r.collection = p_collection
               AND r.id = t.record_id)
    ON CONFLICT DO NOTHING;
    RETURN true;
END
$$;

-- ---- privileges -------------------------------------------------------------------------------
--
-- `bulkhead_app` gets row access, never ownership: owners can turn row-level security off.
-- It gets nothing on `schema_migrations`.

GRANT SELECT, INSERT, UPDATE, DELETE
    ON settings, tenants, signing_keys, collections, records, record_index, idempotency
    TO bulkhead_app;

REVOKE ALL ON FUNCTION
    bulkhead_insert_record(uuid, text, uuid, bigint, bytea, bigint, bigint, bigint, bytea[], bytea, bytea, bytea, bigint),
    bulkhead_update_record(uuid, text, uuid, bigint, bytea, bigint, bigint, bigint, bytea[]),
    bulkhead_delete_record(uuid, text, uuid, bigint),
    bulkhead_reindex(uuid, text, bigint, uuid[], uuid[], bytea[])
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    bulkhead_insert_record(uuid, text, uuid, bigint, bytea, bigint, bigint, bigint, bytea[], bytea, bytea, bytea, bigint),
    bulkhead_update_record(uuid, text, uuid, bigint, bytea, bigint, bigint, bigint, bytea[]),
    bulkhead_delete_record(uuid, text, uuid, bigint),
    bulkhead_reindex(uuid, text, bigint, uuid[], uuid[], bytea[])
    TO bulkhead_app;
