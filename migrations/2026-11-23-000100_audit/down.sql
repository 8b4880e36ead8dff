DROP TABLE IF EXISTS audit_checkpoints;
DROP TABLE IF EXISTS audit_chain_head;
DROP TABLE IF EXISTS audit_events;
DROP FUNCTION IF EXISTS audit_head_forward_only();
DROP FUNCTION IF EXISTS audit_refuse_change();
-- The cluster-wide role custodian_app is left in place: other databases may use it.
