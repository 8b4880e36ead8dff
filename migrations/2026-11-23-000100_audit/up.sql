-- The tamper-evident audit trail (see README "Audit trail" and "Database roles").
--
-- audit_events       one row per event, hash-chained: hash = HMAC(chain key, prev ‖ canonical)
-- audit_chain_head   exactly one row: the last sequence number and hash; writers lock it
--                    (SELECT … FOR UPDATE) so that one gapless chain spans all instances
-- audit_checkpoints  Ed25519-signed (sequence, head hash, time, key id) statements

CREATE TABLE audit_events (
    seq                  BIGINT PRIMARY KEY CHECK (seq > 0),
    event_id             UUID NOT NULL UNIQUE,
    occurred_at          TIMESTAMPTZ NOT NULL,
    actor_user_id        UUID,
    actor_client_id      TEXT,
    actor_roles          TEXT[] NOT NULL,
    auth_method          TEXT NOT NULL,
    client_app           TEXT,
    action               TEXT NOT NULL,
    resource_type        TEXT,
    resource_id          UUID,
    patient_ids          UUID[] NOT NULL,
    outcome              TEXT NOT NULL,
    deny_reason          TEXT,
    purpose_of_use       TEXT,
    break_glass_grant_id UUID,
    source_ip            TEXT,
    user_agent           TEXT,
    request_id           TEXT,
    hash                 BYTEA NOT NULL CHECK (octet_length(hash) = 32)
);
CREATE INDEX audit_events_occurred_at ON audit_events (occurred_at);
CREATE INDEX audit_events_patient_ids ON audit_events USING GIN (patient_ids);
CREATE INDEX audit_events_actor_user ON audit_events (actor_user_id) WHERE actor_user_id IS NOT NULL;

CREATE TABLE audit_chain_head (
    id                 BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (id),
    seq                BIGINT NOT NULL CHECK (seq >= 0),
    hash               BYTEA NOT NULL CHECK (octet_length(hash) = 32),
    checkpoint_no      BIGINT NOT NULL DEFAULT 0,
    checkpoint_seq     BIGINT NOT NULL DEFAULT 0,
    checkpoint_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
INSERT INTO audit_chain_head (id, seq, hash) VALUES (TRUE, 0, decode(repeat('00', 32), 'hex'));

CREATE TABLE audit_checkpoints (
    checkpoint_no  BIGINT PRIMARY KEY CHECK (checkpoint_no > 0),
    seq            BIGINT NOT NULL,
    head_hash      BYTEA NOT NULL CHECK (octet_length(head_hash) = 32),
    created_at     TIMESTAMPTZ NOT NULL,
    key_id         TEXT NOT NULL,
    signature      BYTEA NOT NULL CHECK (octet_length(signature) = 64)
);

-- Append-only, for everyone (the owner and superusers included, unless they disable
-- the trigger, which verification then catches).
CREATE FUNCTION audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit records are append-only: % on % is refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();

-- The head row may only move forward; it can never be deleted or truncated.
CREATE FUNCTION audit_head_forward_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.seq < OLD.seq OR NEW.checkpoint_no < OLD.checkpoint_no OR NEW.id IS DISTINCT FROM OLD.id THEN
        RAISE EXCEPTION 'the audit chain head only moves forward'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER audit_chain_head_forward_only BEFORE UPDATE ON audit_chain_head
    FOR EACH ROW EXECUTE FUNCTION audit_head_forward_only();
CREATE TRIGGER audit_chain_head_no_delete BEFORE DELETE ON audit_chain_head
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_chain_head_no_truncate BEFORE TRUNCATE ON audit_chain_head
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();

REVOKE ALL ON audit_events, audit_chain_head, audit_checkpoints FROM PUBLIC;

-- The application role: INSERT and SELECT on the audit tables, plus UPDATE on the
-- single chain-head row (needed to lock it with SELECT … FOR UPDATE and to advance it).
-- Roles are cluster-wide: create it only if missing, and carry on (with a notice) when
-- the migrating role may not create roles — production creates it beforehand.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'custodian_app') THEN
        CREATE ROLE custodian_app NOLOGIN;
    END IF;
EXCEPTION
    WHEN insufficient_privilege THEN
        RAISE NOTICE 'custodian_app role not created (no CREATEROLE); create it as described in README "Database roles"';
    WHEN duplicate_object OR unique_violation THEN
        NULL; -- created concurrently by another database's migration
END
$$;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'custodian_app') THEN
        GRANT SELECT, INSERT ON audit_events, audit_checkpoints TO custodian_app;
        GRANT SELECT, UPDATE ON audit_chain_head TO custodian_app;
        EXECUTE format('GRANT CONNECT ON DATABASE %I TO custodian_app', current_database());
        GRANT USAGE ON SCHEMA public TO custodian_app;
    END IF;
END
$$;
