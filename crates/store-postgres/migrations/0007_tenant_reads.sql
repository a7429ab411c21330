-- Bulkhead's PostgreSQL schema, version 7: one-statement reads of a tenant's metadata, and
-- collection and policy changes on the registry change feed.
--
-- A tenant's collection definitions, its policy version in force and its storage usage are
-- read by every instance into short-lived caches. Each read was a pipelined transaction of
-- four statements (`BEGIN`, `set_config`, the query, `COMMIT`); these functions make each one
-- statement, like `bulkhead_get_record` (0002): the function sets the tenant for row-level
-- security first, the statement is its own transaction, and the setting ends with it.
--
-- A change of a tenant's collections or policies now stamps the tenant with a new registry
-- revision (the triggers of 0006), so other instances drop their cached definitions and
-- policy sets within about a second and can otherwise keep them for long.

CREATE FUNCTION bulkhead_get_collection(p_tenant uuid, p_name text)
RETURNS TABLE (name text, version bigint, definition bytea, created_at bigint, updated_at bigint)
LANGUAGE plpgsql
SECURITY INVOKER
AS $$
BEGIN
    PERFORM set_config('bulkhead.tenant_id', p_tenant::text, true);
    RETURN QUERY
        SELECT c.name, c.version, c.definition, c.created_at, c.updated_at
          FROM collections c
         WHERE c.tenant_id = p_tenant AND c.name = p_name;
END
$$;

CREATE FUNCTION bulkhead_latest_policy(p_tenant uuid)
RETURNS TABLE (version bigint, sealed bytea, created_at bigint)
LANGUAGE plpgsql
SECURITY INVOKER
AS $$
BEGIN
    PERFORM set_config('bulkhead.tenant_id', p_tenant::text, true);
    RETURN QUERY
        SELECT p.version, p.sealed, p.created_at
          FROM policies p
         WHERE p.tenant_id = p_tenant
         ORDER BY p.version DESC
         LIMIT 1;
END
$$;

CREATE FUNCTION bulkhead_usage(p_tenant uuid)
RETURNS TABLE (records bigint, bytes bigint, collections bigint)
LANGUAGE plpgsql
SECURITY INVOKER
AS $$
BEGIN
    PERFORM set_config('bulkhead.tenant_id', p_tenant::text, true);
    RETURN QUERY
        SELECT coalesce((SELECT sum(u.records)::bigint FROM tenant_usage u WHERE u.tenant_id = p_tenant), 0),
               coalesce((SELECT sum(u.bytes)::bigint FROM tenant_usage u WHERE u.tenant_id = p_tenant), 0),
               (SELECT count(*) FROM collections c WHERE c.tenant_id = p_tenant);
END
$$;

CREATE TRIGGER collections_stamp_tenant
    AFTER INSERT OR UPDATE OR DELETE ON collections
    FOR EACH ROW EXECUTE FUNCTION bulkhead_stamp_owning_tenant();

CREATE TRIGGER policies_stamp_tenant
    AFTER INSERT OR DELETE ON policies
    FOR EACH ROW EXECUTE FUNCTION bulkhead_stamp_owning_tenant();

REVOKE ALL ON FUNCTION
    bulkhead_get_collection(uuid, text),
    bulkhead_latest_policy(uuid),
    bulkhead_usage(uuid)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    bulkhead_get_collection(uuid, text),
    bulkhead_latest_policy(uuid),
    bulkhead_usage(uuid)
    TO bulkhead_app;
