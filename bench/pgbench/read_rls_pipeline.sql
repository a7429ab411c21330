-- read_rls.sql with the four statements pipelined (one round trip per transaction), which is
-- what Bulkhead does (conn.rs `Conn::transaction`). Needs -M extended or -M prepared.
\set t random(1, :tenants)
\set id :t * 1000000 + random(1, :records)
\startpipeline
BEGIN READ ONLY;
SELECT set_config('bulkhead.tenant_id', '00000000-0000-7000-8000-' || lpad(to_hex(:t::bigint), 12, '0'), true);
SELECT collection, id, version, data, created_at, updated_at FROM pgb_records
 WHERE tenant_id = ('00000000-0000-7000-8000-' || lpad(to_hex(:t::bigint), 12, '0'))::uuid
   AND collection = 'bench'
   AND id = ('00000000-0000-7000-8000-' || lpad(to_hex(:id::bigint), 12, '0'))::uuid;
COMMIT;
\endpipeline
