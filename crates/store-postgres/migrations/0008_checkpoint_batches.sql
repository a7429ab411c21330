-- Bulkhead's PostgreSQL schema, version 8: checkpoints signed in batches.
--
-- The checkpointer signs the checkpoints of one round together: each checkpoint is a leaf of
-- a fixed-width Merkle tree whose root is signed once (crates/audit/src/checkpoint.rs). A
-- checkpoint's row keeps its slot, the width and its audit path to the signed root, so it
-- verifies on its own with the public key. Rows written before this version have none: their
-- signature is over the checkpoint alone.

ALTER TABLE audit_checkpoints ADD COLUMN batch bytea NOT NULL DEFAULT ''::bytea;
ALTER TABLE audit_operator_checkpoints ADD COLUMN batch bytea NOT NULL DEFAULT ''::bytea;
