-- Performance isolation: tiers, tenants' limit overrides, and per-tenant storage usage.
--
-- `tiers` and `tenant_limits` are operator (platform) data like `tenants`: read before a tenant
-- context exists, so no row-level security. `tenant_usage` is tenant-owned: `tenant_id` leads
-- its key, and it has the same forced policy as every tenant-owned table.

CREATE TABLE tiers (
    name       text PRIMARY KEY,
    limits     text NOT NULL,
    updated_at bigint NOT NULL
);

CREATE TABLE tenant_limits (
    tenant_id uuid PRIMARY KEY,
    overrides text NOT NULL
);

-- Sharded: a record counts in shard (last byte of its id) & 15, so concurrent writes of one
-- tenant update 16 rows, not one hot row whose lock each write would hold until its commit's
-- WAL flush (which would cap one tenant at one write per flush). Usage is the sum of shards.
CREATE TABLE tenant_usage (
    tenant_id uuid NOT NULL,
    shard     smallint NOT NULL,
    records   bigint NOT NULL,
    bytes     bigint NOT NULL,
    PRIMARY KEY (tenant_id, shard)
);

-- Existing records are counted once. The owner reads `records` past its forced policy for this
-- (in this transaction only: FORCE is back before it commits).
ALTER TABLE records NO FORCE ROW LEVEL SECURITY;
INSERT INTO tenant_usage (tenant_id, shard, records, bytes)
SELECT tenant_id, 0, count(*), coalesce(sum(octet_length(data)), 0) FROM records GROUP BY tenant_id;
ALTER TABLE records FORCE ROW LEVEL SECURITY;

ALTER TABLE tenant_usage ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_usage FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenant_usage
    USING (tenant_id = NULLIF(current_setting('bulkhead.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('bulkhead.tenant_id', true), '')::uuid);

-- Usage is kept in the transaction of the write itself, so it never drifts from `records`.
-- SECURITY INVOKER: it runs as `bulkhead_app`, under the policy above. A delete only changes
-- an existing row: a purge removes the tenant's usage row in the same statement.
CREATE FUNCTION bulkhead_count_usage()
RETURNS trigger
LANGUAGE plpgsql
SECURITY INVOKER
AS $$
DECLARE
    v_shard smallint;
BEGIN
    IF TG_OP = 'INSERT' THEN
        v_shard := get_byte(uuid_send(NEW.id), 15) & 15;
        INSERT INTO tenant_usage AS u (tenant_id, shard, records, bytes)
        VALUES (NEW.tenant_id, v_shard, 1, octet_length(NEW.data))
        ON CONFLICT (tenant_id, shard)
        DO UPDATE SET records = u.records + 1, bytes = u.bytes + octet_length(NEW.data);
    ELSIF TG_OP = 'UPDATE' THEN
        -- Any shard of the tenant will do: usage is the sum (an upsert: the row may not exist).
        v_shard := get_byte(uuid_send(NEW.id), 15) & 15;
        INSERT INTO tenant_usage AS u (tenant_id, shard, records, bytes)
        VALUES (NEW.tenant_id, v_shard, 0, octet_length(NEW.data) - octet_length(OLD.data))
        ON CONFLICT (tenant_id, shard)
        DO UPDATE SET bytes = u.bytes + octet_length(NEW.data) - octet_length(OLD.data);
    ELSE
        v_shard := get_byte(uuid_send(OLD.id), 15) & 15;
        INSERT INTO tenant_usage AS u (tenant_id, shard, records, bytes)
        VALUES (OLD.tenant_id, v_shard, -1, -octet_length(OLD.data))
        ON CONFLICT (tenant_id, shard)
        DO UPDATE SET records = u.records - 1, bytes = u.bytes - octet_length(OLD.data);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER records_usage
    AFTER INSERT OR UPDATE OF data OR DELETE ON records
    FOR EACH ROW EXECUTE FUNCTION bulkhead_count_usage();

GRANT SELECT, INSERT, UPDATE, DELETE ON tiers, tenant_limits, tenant_usage TO bulkhead_app;
