-- Step-up for sensitive console actions: when the session last passed a TOTP check, and
-- the one action waiting for a fresh code (kept server-side so it cannot be forged; it
-- follows the session when its id is renewed and dies with it).
ALTER TABLE console_sessions ADD COLUMN totp_at timestamptz;

CREATE TABLE console_pending_actions (
    session_hash bytea PRIMARY KEY
        REFERENCES console_sessions (id_hash) ON UPDATE CASCADE ON DELETE CASCADE,
    action jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'custodian_app') THEN
        GRANT SELECT, INSERT, UPDATE, DELETE ON console_pending_actions TO custodian_app;
    END IF;
END
$$;
