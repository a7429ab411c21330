-- Audit logs (docs/audit.md): one per tenant, one for the operator plane.
--
-- A request appends its entry to `audit_pending` in the same transaction as the data change
-- it describes (concurrent transactions do not contend: the identity column orders them). The
-- checkpointer then *places* pending entries: it gives them sequence numbers from the log's
-- size, stores their leaf hashes in `audit_entries`, and signs checkpoints into
-- `audit_checkpoints`.
--
-- The tenant tables are tenant-owned: tenant_id leads every key, row-level security is enabled
-- and forced, as for 0001's tables. The operator log's tables have the same columns, with
-- tenant_id held to the nil UUID; they belong to no tenant and have no RLS.
--
-- Append-only: the application role may not UPDATE entries or checkpoints, nor DELETE
-- checkpoints. It may DELETE entries (retention, below a checkpoint) and pending rows (once
-- placed). Offboarding a tenant does not touch these tables: its log and checkpoints stay.

CREATE TABLE audit_pending (
    tenant_id uuid NOT NULL,
    id        bigint GENERATED ALWAYS AS IDENTITY,
    body      bytea NOT NULL,
    PRIMARY KEY (tenant_id, id)
);

CREATE TABLE audit_entries (
    tenant_id uuid NOT NULL,
    seq       bigint NOT NULL CHECK (seq >= 0),
    body      bytea NOT NULL,
    leaf      bytea NOT NULL,
    PRIMARY KEY (tenant_id, seq)
);

CREATE TABLE audit_checkpoints (
    tenant_id uuid NOT NULL,
    size      bigint NOT NULL CHECK (size >= 0),
    root      bytea NOT NULL,
    time_us   bigint NOT NULL,
    key_id    text NOT NULL,
    signature bytea NOT NULL,
    frontier  bytea NOT NULL,
    PRIMARY KEY (tenant_id, size)
);

ALTER TABLE audit_pending ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_pending FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON audit_pending
    USING (tenant_id = NULLIF(current_setting('bulkhead.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('bulkhead.tenant_id', true), '')::uuid);

ALTER TABLE audit_entries ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_entries FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON audit_entries
    USING (tenant_id = NULLIF(current_setting('bulkhead.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('bulkhead.tenant_id', true), '')::uuid);

ALTER TABLE audit_checkpoints ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_checkpoints FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON audit_checkpoints
    USING (tenant_id = NULLIF(current_setting('bulkhead.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('bulkhead.tenant_id', true), '')::uuid);

CREATE TABLE audit_operator_pending (
    tenant_id uuid NOT NULL DEFAULT '00000000-0000-0000-0000-000000000000'
        CHECK (tenant_id = '00000000-0000-0000-0000-000000000000'),
    id        bigint GENERATED ALWAYS AS IDENTITY,
    body      bytea NOT NULL,
    PRIMARY KEY (tenant_id, id)
);

CREATE TABLE audit_operator_entries (
    tenant_id uuid NOT NULL CHECK (tenant_id = '00000000-0000-0000-0000-000000000000'),
    seq       bigint NOT NULL CHECK (seq >= 0),
    body      bytea NOT NULL,
    leaf      bytea NOT NULL,
    PRIMARY KEY (tenant_id, seq)
);

CREATE TABLE audit_operator_checkpoints (
    tenant_id uuid NOT NULL CHECK (tenant_id = '00000000-0000-0000-0000-000000000000'),
    size      bigint NOT NULL CHECK (size >= 0),
    root      bytea NOT NULL,
    time_us   bigint NOT NULL,
    key_id    text NOT NULL,
    signature bytea NOT NULL,
    frontier  bytea NOT NULL,
    PRIMARY KEY (tenant_id, size)
);

GRANT SELECT, INSERT, DELETE ON audit_pending, audit_entries, audit_operator_pending,
    audit_operator_entries TO bulkhead_app;
GRANT SELECT, INSERT ON audit_checkpoints, audit_operator_checkpoints TO bulkhead_app;
