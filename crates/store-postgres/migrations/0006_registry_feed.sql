-- Bulkhead's PostgreSQL schema, version 6: the registry change feed.
--
-- Every change of a tenant's registry entry — its row in `tenants` (status, tier, placement,
-- shredding), any of its `signing_keys`, its limit overrides in `tenant_limits` — stamps the tenant with a new revision from one
-- sequence. Instances poll `tenants` for revisions they have not seen (an index range scan)
-- and drop those tenants from their caches, so another instance's suspension or key rotation
-- applies everywhere within about a second, and cached tenants need not be re-read every few
-- seconds. Triggers stamp the revision, so no statement (of this or a later migration) can
-- change a tenant and forget to.
--
-- `tenants` is a platform (registry) table: no row-level security; `bulkhead_app` needs the
-- sequence to run the triggers, which are SECURITY INVOKER like everything else.

CREATE SEQUENCE registry_revision AS bigint;

ALTER TABLE tenants
    ADD COLUMN revision bigint NOT NULL DEFAULT nextval('registry_revision');
CREATE INDEX tenants_by_revision ON tenants (revision);

CREATE FUNCTION bulkhead_stamp_tenant() RETURNS trigger
LANGUAGE plpgsql
SECURITY INVOKER
AS $$
BEGIN
    NEW.revision := nextval('registry_revision');
    RETURN NEW;
END
$$;

CREATE TRIGGER tenants_stamp_revision
    BEFORE UPDATE ON tenants
    FOR EACH ROW EXECUTE FUNCTION bulkhead_stamp_tenant();

-- A change of a row that belongs to a tenant's entry (a signing key, the limit overrides) stamps the
-- tenant (whose BEFORE UPDATE trigger takes the revision).
CREATE FUNCTION bulkhead_stamp_owning_tenant() RETURNS trigger
LANGUAGE plpgsql
SECURITY INVOKER
AS $$
BEGIN
    UPDATE tenants SET revision = 0
     WHERE tenant_id = CASE WHEN TG_OP = 'DELETE' THEN OLD.tenant_id ELSE NEW.tenant_id END;
    RETURN NULL;
END
$$;

CREATE TRIGGER signing_keys_stamp_tenant
    AFTER INSERT OR UPDATE OR DELETE ON signing_keys
    FOR EACH ROW EXECUTE FUNCTION bulkhead_stamp_owning_tenant();

-- A tenant's limit overrides (`0005_limits.sql`) are part of its registry entry too.
CREATE TRIGGER tenant_limits_stamp_tenant
    AFTER INSERT OR UPDATE OR DELETE ON tenant_limits
    FOR EACH ROW EXECUTE FUNCTION bulkhead_stamp_owning_tenant();

GRANT USAGE ON SEQUENCE registry_revision TO bulkhead_app;
REVOKE ALL ON FUNCTION bulkhead_stamp_tenant(), bulkhead_stamp_owning_tenant() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION bulkhead_stamp_tenant(), bulkhead_stamp_owning_tenant() TO bulkhead_app;
