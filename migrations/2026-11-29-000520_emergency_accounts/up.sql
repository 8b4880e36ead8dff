-- Emergency ("break-the-glass") console accounts for when the OpenID provider is down
-- (HIPAA emergency access procedure). Each is a local user (issuer
-- 'urn:custodian:emergency', subject = name) holding the admin role, signed in with an
-- argon2id password plus the user's TOTP (console_totp).
CREATE TABLE emergency_accounts (
    id uuid PRIMARY KEY,
    name text NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9][a-z0-9._-]{0,63}$'),
    user_id uuid NOT NULL UNIQUE REFERENCES users (id),
    password_hash text NOT NULL CHECK (password_hash LIKE '$argon2id$%' AND length(password_hash) <= 200),
    disabled_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now()
);

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'custodian_app') THEN
        GRANT SELECT, INSERT, UPDATE ON emergency_accounts TO custodian_app;
    END IF;
END
$$;
