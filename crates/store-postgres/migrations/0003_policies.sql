-- Tenant policy versions (issue 4). Append-only: the highest version of a tenant is in force;
-- a rollback stores an earlier text as a new version. The text is sealed with the tenant's
-- data key (policy text is tenant data).
--
-- INVARIANT: like every tenant-owned table, tenant_id leads the primary key, and row-level
-- security (enabled and forced) shows and accepts only rows of the transaction's
-- `bulkhead.tenant_id`.

CREATE TABLE policies (
    tenant_id  uuid NOT NULL,
    version    bigint NOT NULL CHECK (version > 0),
    sealed     bytea NOT NULL,
    created_at bigint NOT NULL,
    PRIMARY KEY (tenant_id, version)
);

ALTER TABLE policies ENABLE ROW LEVEL SECURITY;
ALTER TABLE policies FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON policies
    USING (tenant_id = NULLIF(current_setting('bulkhead.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('bulkhead.tenant_id', true), '')::uuid);

-- Versions are never rewritten: the application role may add and read them, and delete them
-- only when the tenant is offboarded.
GRANT SELECT, INSERT, DELETE ON policies TO bulkhead_app;
