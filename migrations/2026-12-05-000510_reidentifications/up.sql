-- Re-identification of export pseudonyms (issue 17): one row per re-identification that
-- passed the role, step-up and justification checks, whether the pseudonym resolved or
-- not. The justification is workforce free text about a patient: sealed like every such
-- field (AES-256-GCM bound to table, column and row id; `key_version` for rotation,
-- `crypto::columns`). Append-only: only a key rotation may re-seal the justification.
CREATE TABLE reidentifications (
    id uuid PRIMARY KEY,
    user_id uuid NOT NULL REFERENCES users (id),
    -- NULL: no patient's pseudonym under that key matched.
    patient_id uuid REFERENCES patients (id),
    -- The public fingerprint of the export key the pseudonym was checked under.
    export_key_id text NOT NULL CHECK (export_key_id ~ '^[0-9a-f]{16}$'),
    justification_sealed bytea NOT NULL,
    key_version integer NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE INDEX reidentifications_by_time ON reidentifications (created_at);
CREATE INDEX reidentifications_key_version ON reidentifications (key_version);

CREATE FUNCTION reidentifications_seal_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'reidentifications rows are never changed or deleted';
    END IF;
    IF NEW.id <> OLD.id OR NEW.user_id <> OLD.user_id
        OR NEW.patient_id IS DISTINCT FROM OLD.patient_id
        OR NEW.export_key_id <> OLD.export_key_id OR NEW.created_at <> OLD.created_at THEN
        RAISE EXCEPTION 'reidentifications rows are never changed or deleted';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER reidentifications_seal_only
    BEFORE UPDATE OR DELETE ON reidentifications
    FOR EACH ROW EXECUTE FUNCTION reidentifications_seal_only();

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'custodian_app') THEN
        GRANT SELECT, INSERT, UPDATE ON reidentifications TO custodian_app;
    END IF;
END
$$;
