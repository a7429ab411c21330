-- A record insert in Bulkhead's transaction pattern: BEGIN; set_config(tenant, is_local);
-- INSERT a new row (random id, :data_bytes bytes of data); COMMIT. One round trip each.
-- Bulkhead's own insert (bulkhead_insert_record) also locks the collection row FOR SHARE and
-- adds an index entry per indexed field: this script does less work per write than Bulkhead.
-- Variables (pgbench -D): tenants, data_bytes.
\set t random(1, :tenants)
BEGIN;
SELECT set_config('bulkhead.tenant_id', '00000000-0000-7000-8000-' || lpad(to_hex(:t::bigint), 12, '0'), true);
INSERT INTO pgb_records (tenant_id, collection, id, version, data, created_at, updated_at)
VALUES (('00000000-0000-7000-8000-' || lpad(to_hex(:t::bigint), 12, '0'))::uuid, 'bench', gen_random_uuid(), 1,
        decode(repeat('a5', :data_bytes::int), 'hex'),
        (extract(epoch FROM clock_timestamp()) * 1000000)::bigint,
        (extract(epoch FROM clock_timestamp()) * 1000000)::bigint);
COMMIT;
