-- pgbench side of bench/pg-compare.sh: a table shaped like Bulkhead's `records`, with the same
-- row-level security policy, filled with :tenants x :records rows of :data_bytes bytes.
-- Run as a superuser (the table's owner) with psql variables
--   tenants, records, data_bytes, app_role (RLS applies), plain_role (BYPASSRLS).
-- Ids are deterministic: tenant t is uuid(t), its record r is uuid(t * 1000000 + r), where
-- uuid(n) = '00000000-0000-7000-8000-' || lpad(to_hex(n), 12, '0').
\set ON_ERROR_STOP on

CREATE TABLE pgb_records (
    tenant_id  uuid NOT NULL,
    collection text NOT NULL,
    id         uuid NOT NULL,
    version    bigint NOT NULL,
    data       bytea NOT NULL,
    created_at bigint NOT NULL,
    updated_at bigint NOT NULL
);

-- Filled before the primary key is built (faster), as postgres (a superuser: no RLS).
INSERT INTO pgb_records (tenant_id, collection, id, version, data, created_at, updated_at)
SELECT ('00000000-0000-7000-8000-' || lpad(to_hex(t), 12, '0'))::uuid,
       'bench',
       ('00000000-0000-7000-8000-' || lpad(to_hex(t::bigint * 1000000 + r), 12, '0'))::uuid,
       1,
       substring(decode(repeat(md5((t::bigint * 1000000 + r)::text), 64), 'hex') FROM 1 FOR :data_bytes),
       (extract(epoch FROM now()) * 1000000)::bigint,
       (extract(epoch FROM now()) * 1000000)::bigint
  FROM generate_series(1, :tenants) AS t,
       generate_series(1, :records) AS r;

ALTER TABLE pgb_records ADD PRIMARY KEY (tenant_id, collection, id);

-- The policy of crates/store-postgres/migrations/0001_init.sql, word for word.
ALTER TABLE pgb_records ENABLE ROW LEVEL SECURITY;
ALTER TABLE pgb_records FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON pgb_records
    USING (tenant_id = NULLIF(current_setting('bulkhead.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('bulkhead.tenant_id', true), '')::uuid);

-- Two login roles, neither owning anything: the RLS one (like `bulkhead_app`) and, for the
-- reference line only, one that bypasses RLS (the plain scripts filter on tenant_id themselves).
CREATE ROLE :"app_role" LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
CREATE ROLE :"plain_role" LOGIN NOSUPERUSER BYPASSRLS NOCREATEDB NOCREATEROLE;
GRANT SELECT, INSERT ON pgb_records TO :"app_role", :"plain_role";

VACUUM (ANALYZE) pgb_records;
