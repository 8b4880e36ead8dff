-- Break-glass, continued (issue 13).
--
-- 1. Privacy officers' reviews of grants: append-only (a verdict is never changed; a
--    later one is added). The notes are workforce free text.
CREATE TABLE break_glass_reviews (
    seq bigserial PRIMARY KEY,
    grant_id uuid NOT NULL REFERENCES break_glass_grants (id),
    verdict text NOT NULL CHECK (verdict IN ('appropriate', 'inappropriate', 'needs-follow-up')),
    notes text NOT NULL CHECK (length(notes) BETWEEN 3 AND 2000),
    reviewer uuid NOT NULL REFERENCES users (id),
    reviewed_at timestamptz NOT NULL
);
CREATE INDEX break_glass_reviews_by_grant ON break_glass_reviews (grant_id, seq);

-- 2. Alerts: one row per alerting event, shown on the console dashboard and shaped for a
--    later webhook delivery (`delivered_at`, `attempts`, `last_attempt_at`): ids and codes
--    only, never free text.
CREATE TABLE alerts (
    id uuid PRIMARY KEY,
    kind text NOT NULL CHECK (kind IN ('break-glass-request', 'break-glass-approval', 'break-glass-first-use')),
    severity text NOT NULL CHECK (severity IN ('high')),
    grant_id uuid NOT NULL REFERENCES break_glass_grants (id),
    user_id uuid NOT NULL REFERENCES users (id),
    patient_id uuid NOT NULL REFERENCES patients (id),
    created_at timestamptz NOT NULL,
    delivered_at timestamptz,
    attempts integer NOT NULL DEFAULT 0,
    last_attempt_at timestamptz,
    UNIQUE (grant_id, kind)
);
CREATE INDEX alerts_recent ON alerts (created_at);
CREATE INDEX alerts_undelivered ON alerts (created_at) WHERE delivered_at IS NULL;

CREATE FUNCTION append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% rows are never changed or deleted', TG_TABLE_NAME;
END
$$;
CREATE TRIGGER break_glass_reviews_append_only
    BEFORE UPDATE OR DELETE ON break_glass_reviews
    FOR EACH ROW EXECUTE FUNCTION append_only();
CREATE TRIGGER confidentiality_changes_append_only
    BEFORE UPDATE OR DELETE ON confidentiality_changes
    FOR EACH ROW EXECUTE FUNCTION append_only();

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'custodian_app') THEN
        GRANT SELECT, INSERT ON break_glass_reviews TO custodian_app;
        GRANT USAGE ON SEQUENCE break_glass_reviews_seq_seq TO custodian_app;
        GRANT SELECT, INSERT, UPDATE ON alerts TO custodian_app;
    END IF;
END
$$;
