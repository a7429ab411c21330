-- A point read in Bulkhead's transaction pattern (crates/store-postgres/src/conn.rs):
-- BEGIN READ ONLY; set_config(tenant, is_local); the statement; COMMIT. One round trip each.
-- Variables (pgbench -D): tenants, records.
\set t random(1, :tenants)
\set id :t * 1000000 + random(1, :records)
BEGIN READ ONLY;
SELECT set_config('bulkhead.tenant_id', '00000000-0000-7000-8000-' || lpad(to_hex(:t::bigint), 12, '0'), true);
SELECT collection, id, version, data, created_at, updated_at FROM pgb_records
 WHERE tenant_id = ('00000000-0000-7000-8000-' || lpad(to_hex(:t::bigint), 12, '0'))::uuid
   AND collection = 'bench'
   AND id = ('00000000-0000-7000-8000-' || lpad(to_hex(:id::bigint), 12, '0'))::uuid;
COMMIT;
