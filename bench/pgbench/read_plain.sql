-- Reference line: the same point read as one autocommit statement with an explicit tenant
-- filter, no transaction block, no set_config (run as a BYPASSRLS role, else RLS hides rows).
\set t random(1, :tenants)
\set id :t * 1000000 + random(1, :records)
SELECT collection, id, version, data, created_at, updated_at FROM pgb_records
 WHERE tenant_id = ('00000000-0000-7000-8000-' || lpad(to_hex(:t::bigint), 12, '0'))::uuid
   AND collection = 'bench'
   AND id = ('00000000-0000-7000-8000-' || lpad(to_hex(:id::bigint), 12, '0'))::uuid;
