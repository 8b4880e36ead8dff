-- Admin console sessions, server-side so that several instances share them and a
-- signed-out or revoked session is gone everywhere. Only a SHA-256 of the session id
-- (256 random bits in the cookie) is stored.
CREATE TABLE console_sessions (
    id_hash bytea PRIMARY KEY CHECK (length(id_hash) = 32),
    -- 'pre_login': OIDC state, nonce and PKCE verifier kept until the callback;
    -- 'totp': OIDC login done, TOTP pending; 'active': fully signed in.
    stage text NOT NULL CHECK (stage IN ('pre_login', 'totp', 'active')),
    user_id uuid REFERENCES users (id),
    csrf_token text NOT NULL CHECK (length(csrf_token) BETWEEN 32 AND 128),
    oidc_state text,
    oidc_nonce text,
    pkce_verifier text,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    CHECK ((stage = 'pre_login') = (user_id IS NULL))
);
CREATE INDEX console_sessions_by_user ON console_sessions (user_id);
CREATE INDEX console_sessions_by_last_seen ON console_sessions (last_seen_at);

-- One TOTP secret per console user, sealed with the keyring (FieldPlace
-- console_totp.secret_sealed of this row id).
CREATE TABLE console_totp (
    id uuid PRIMARY KEY,
    user_id uuid NOT NULL UNIQUE REFERENCES users (id),
    secret_sealed bytea NOT NULL,
    key_version integer NOT NULL,
    confirmed_at timestamptz,
    -- The last accepted 30-second time step: a code for this step or an earlier one is refused.
    last_step bigint,
    failures integer NOT NULL DEFAULT 0 CHECK (failures >= 0),
    locked_until timestamptz,
    created_at timestamptz NOT NULL DEFAULT now()
);

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'custodian_app') THEN
        GRANT SELECT, INSERT, UPDATE, DELETE ON console_sessions TO custodian_app;
        GRANT SELECT, INSERT, UPDATE, DELETE ON console_totp TO custodian_app;
    END IF;
END
$$;
