-- "Verify now" on the console dashboard (issue 14): one row per verification of the
-- audit chain run from the console, its progress while it runs and its result. Only
-- counts, sequence numbers and the verifier's fixed problem text: never event content.
CREATE TABLE audit_verifications (
    id uuid PRIMARY KEY,
    started_at timestamptz NOT NULL,
    started_by uuid NOT NULL REFERENCES users (id),
    total_events bigint NOT NULL,
    verified_events bigint NOT NULL DEFAULT 0,
    finished_at timestamptz,
    ok boolean,
    failed_seq bigint,
    problem text CHECK (length(problem) <= 500)
);
CREATE INDEX audit_verifications_recent ON audit_verifications (started_at);

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'custodian_app') THEN
        GRANT SELECT, INSERT, UPDATE ON audit_verifications TO custodian_app;
    END IF;
END
$$;
