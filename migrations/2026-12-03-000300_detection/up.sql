-- Detection (issue 15): the alerts table generalised beyond break-glass, and the
-- detectors' cursor over the audit trail.
--
-- Alerts hold ids, codes and numbers only: the plain-words explanation is built when
-- shown from `reason` (a code) and `figures` (numbers), never stored as free text.
-- The kind vocabulary lives in the code (`db::alerts::AlertKind`); the table only checks
-- the shape of a code, so a module adds a kind without a migration.
ALTER TABLE alerts DROP CONSTRAINT alerts_kind_check;
ALTER TABLE alerts ADD CONSTRAINT alerts_kind_code CHECK (kind ~ '^[a-z][a-z0-9-]{1,62}$');
ALTER TABLE alerts DROP CONSTRAINT alerts_severity_check;
ALTER TABLE alerts ADD CONSTRAINT alerts_severity_level CHECK (severity IN ('low', 'medium', 'high'));
ALTER TABLE alerts ALTER COLUMN grant_id DROP NOT NULL;
ALTER TABLE alerts ALTER COLUMN user_id DROP NOT NULL;
ALTER TABLE alerts ALTER COLUMN patient_id DROP NOT NULL;
ALTER TABLE alerts
    -- Who, when not a person: a source address or an OAuth client id (tokens, no text).
    ADD COLUMN source_ip text CHECK (source_ip IS NULL OR length(source_ip) <= 64),
    ADD COLUMN client_id text CHECK (client_id IS NULL OR length(client_id) <= 128),
    ADD COLUMN reason text NOT NULL DEFAULT 'break-glass' CHECK (reason ~ '^[a-z][a-z0-9-]{1,62}$'),
    ADD COLUMN figures bigint[] NOT NULL DEFAULT '{}' CHECK (cardinality(figures) <= 8),
    ADD COLUMN evidence_seqs bigint[] NOT NULL DEFAULT '{}' CHECK (cardinality(evidence_seqs) <= 50),
    -- A detector's alert is identified by what it is about (kind, subject, window): a
    -- re-run over the same events inserts nothing (ON CONFLICT DO NOTHING).
    ADD COLUMN dedup_key text UNIQUE CHECK (dedup_key IS NULL OR length(dedup_key) <= 200);
CREATE INDEX alerts_by_kind ON alerts (kind, created_at);

-- Exactly one row: the last audit sequence number the detectors have consumed. Moved in
-- the same transaction as the alerts it produced, so a restart neither skips nor repeats.
CREATE TABLE detector_cursor (
    id boolean PRIMARY KEY DEFAULT TRUE CHECK (id),
    seq bigint NOT NULL CHECK (seq >= 0),
    updated_at timestamptz NOT NULL
);
INSERT INTO detector_cursor (id, seq, updated_at) VALUES (TRUE, 0, now());

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'custodian_app') THEN
        GRANT SELECT, UPDATE ON detector_cursor TO custodian_app;
    END IF;
END
$$;
