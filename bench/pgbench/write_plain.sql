-- Reference line: the same insert as one autocommit statement (no transaction block, no
-- set_config; run as a BYPASSRLS role).
\set t random(1, :tenants)
INSERT INTO pgb_records (tenant_id, collection, id, version, data, created_at, updated_at)
VALUES (('00000000-0000-7000-8000-' || lpad(to_hex(:t::bigint), 12, '0'))::uuid, 'bench', gen_random_uuid(), 1,
        decode(repeat('a5', :data_bytes::int), 'hex'),
        (extract(epoch FROM clock_timestamp()) * 1000000)::bigint,
        (extract(epoch FROM clock_timestamp()) * 1000000)::bigint);
