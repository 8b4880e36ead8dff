-- Single-use recovery codes of console users, accepted once each in place of a TOTP
-- code. Shown once after TOTP enrolment; only an argon2id hash (PHC string) is kept.
-- A code is "<selector>-<secret>": the selector (not secret) finds the one row to
-- verify, so a guess costs one argon2 verification, not ten.
CREATE TABLE console_recovery_codes (
    id uuid PRIMARY KEY,
    user_id uuid NOT NULL REFERENCES users (id),
    selector text NOT NULL CHECK (length(selector) BETWEEN 4 AND 16),
    code_hash text NOT NULL CHECK (code_hash LIKE '$argon2id$%' AND length(code_hash) <= 200),
    used_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, selector)
);

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'custodian_app') THEN
        GRANT SELECT, INSERT, UPDATE, DELETE ON console_recovery_codes TO custodian_app;
    END IF;
END
$$;
