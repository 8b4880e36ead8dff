DROP TABLE detector_cursor;
DROP INDEX alerts_by_kind;
DELETE FROM alerts WHERE grant_id IS NULL OR user_id IS NULL OR patient_id IS NULL
    OR kind NOT IN ('break-glass-request', 'break-glass-approval', 'break-glass-first-use');
ALTER TABLE alerts
    DROP COLUMN dedup_key,
    DROP COLUMN evidence_seqs,
    DROP COLUMN figures,
    DROP COLUMN reason,
    DROP COLUMN client_id,
    DROP COLUMN source_ip;
ALTER TABLE alerts ALTER COLUMN grant_id SET NOT NULL;
ALTER TABLE alerts ALTER COLUMN user_id SET NOT NULL;
ALTER TABLE alerts ALTER COLUMN patient_id SET NOT NULL;
ALTER TABLE alerts DROP CONSTRAINT alerts_severity_level;
UPDATE alerts SET severity = 'high';
ALTER TABLE alerts ADD CONSTRAINT alerts_severity_check CHECK (severity IN ('high'));
ALTER TABLE alerts DROP CONSTRAINT alerts_kind_code;
ALTER TABLE alerts ADD CONSTRAINT alerts_kind_check
    CHECK (kind IN ('break-glass-request', 'break-glass-approval', 'break-glass-first-use'));
