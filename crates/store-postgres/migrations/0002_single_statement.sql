-- Bulkhead's PostgreSQL schema, version 2: one statement per hot tenant operation.
--
-- A point read or a record write used to be four statements pipelined in one round trip:
-- `BEGIN`, `set_config('bulkhead.tenant_id', …, true)`, the statement, `COMMIT`. The driver
-- ends each statement with its own Sync, so PostgreSQL answered four times and flushed four
-- times per operation. Here each hot operation becomes ONE statement, a call of a plpgsql
-- function that sets the tenant itself, transaction-locally, as its first step. Sent outside an
-- explicit transaction block, the statement is its own (implicit) transaction: the setting is
-- gone when it ends, exactly as after `COMMIT`, and row-level security applies to every
-- statement inside (SECURITY INVOKER: they run as `bulkhead_app`).
--
-- INVARIANT (unchanged): every statement in these functions filters `tenant_id = p_tenant`
-- itself, and the tenant setting is `p_tenant`, so the application's scoping and row-level
-- security each hold on their own. These functions let their caller choose the tenant, as
-- `set_config` itself does: the wall is against mistakes in Bulkhead's SQL, not against
-- arbitrary SQL run as `bulkhead_app` (see lib.rs).
--
-- Locks: a write that depends on a collection's definition version used to take the
-- collection row FOR SHARE. Row locks are written into the row (and into the WAL, and shared
-- ones into MultiXacts), so every insert dirtied its collection's row. Writers now take a
-- transaction-level SHARED advisory lock on (tenant, collection) instead, held in memory only;
-- a definition change takes the same lock EXCLUSIVE (`bulkhead_replace_collection`). So a
-- write and a definition change are still ordered one before the other, never interleaved,
-- and the version check after taking the lock sees the latest committed definition (READ
-- COMMITTED: each statement of a plpgsql function takes a new snapshot). Writers take the
-- advisory lock before any row lock, so writers and definition changes cannot deadlock.

-- The advisory lock of a tenant's collection uses the two-int form, whose key space is apart
-- from the bigint form the migration lock uses:
-- (hashtext(tenant id as text), hashtext(collection name)). A hash collision only makes two
-- unrelated writers wait for one definition change; it never lets one through early.

CREATE FUNCTION bulkhead_get_record(p_tenant uuid, p_collection text, p_id uuid)
RETURNS TABLE (
    collection text,
    id uuid,
    version bigint,
    data bytea,
    created_at bigint,
    updated_at bigint
)
LANGUAGE plpgsql
SECURITY INVOKER
AS $$
BEGIN
    PERFORM set_config('bulkhead.tenant_id', p_tenant::text, true);
    RETURN QUERY
        SELECT r.collection, r.id, r.version, r.data, r.created_at, r.updated_at
          FROM records r
         WHERE r.tenant_id = p_tenant AND r.collection = p_collection AND r.id = p_id;
END
$$;

-- A changed collection definition, only if it is still at the version the caller read.
-- Returns how many rows changed (0 or 1).
CREATE FUNCTION bulkhead_replace_collection(
    p_tenant uuid,
    p_name text,
    p_version bigint,
    p_definition bytea,
    p_created_at bigint,
    p_updated_at bigint,
    p_expected bigint
)
RETURNS bigint
LANGUAGE plpgsql
SECURITY INVOKER
AS $$
DECLARE
    v_count bigint;
BEGIN
    PERFORM set_config('bulkhead.tenant_id', p_tenant::text, true);
    PERFORM pg_advisory_xact_lock(hashtext(p_tenant::text), hashtext(p_name));
    UPDATE collections
       SET version = p_version, definition = p_definition, created_at = p_created_at,
           updated_at = p_updated_at
     WHERE tenant_id = p_tenant AND name = p_name AND version = p_expected;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$$;

CREATE OR REPLACE FUNCTION bulkhead_insert_record(
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
    PERFORM set_config('bulkhead.tenant_id', p_tenant::text, true);
    PERFORM pg_advisory_xact_lock_shared(hashtext(p_tenant::text), hashtext(p_collection));
    SELECT c.version INTO v_collection
      FROM collections c
     WHERE c.tenant_id = p_tenant AND c.name = p_collection;
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
    IF cardinality(p_tokens) > 0 THEN
        INSERT INTO record_index (tenant_id, collection, token, record_id)
        SELECT p_tenant, p_collection, t.token, p_id
          FROM unnest(p_tokens) AS t(token)
        ON CONFLICT DO NOTHING;
    END IF;
    outcome := 'inserted';
END
$$;

CREATE OR REPLACE FUNCTION bulkhead_update_record(
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
    PERFORM set_config('bulkhead.tenant_id', p_tenant::text, true);
    -- The advisory lock first, then the record: the order every writer uses.
    PERFORM pg_advisory_xact_lock_shared(hashtext(p_tenant::text), hashtext(p_collection));
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
     WHERE c.tenant_id = p_tenant AND c.name = p_collection;
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

CREATE OR REPLACE FUNCTION bulkhead_delete_record(
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
    PERFORM set_config('bulkhead.tenant_id', p_tenant::text, true);
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

CREATE OR REPLACE FUNCTION bulkhead_reindex(
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
    PERFORM set_config('bulkhead.tenant_id', p_tenant::text, true);
    PERFORM pg_advisory_xact_lock_shared(hashtext(p_tenant::text), hashtext(p_collection));
    SELECT c.version INTO v_collection
      FROM collections c
     WHERE c.tenant_id = p_tenant AND c.name = p_collection;
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

REVOKE ALL ON FUNCTION
    bulkhead_get_record(uuid, text, uuid),
    bulkhead_replace_collection(uuid, text, bigint, bytea, bigint, bigint, bigint)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    bulkhead_get_record(uuid, text, uuid),
    bulkhead_replace_collection(uuid, text, bigint, bytea, bigint, bigint, bigint)
    TO bulkhead_app;
