-- Signed webhooks (issue 15, Standard Webhooks): the endpoints administrators register,
-- the outbox of messages (written in the transaction of what they report: an alert, a
-- key rotation, a failed chain verification) and one delivery per message and endpoint.
-- Messages hold ids and codes only, never PHI or free text.
CREATE TABLE webhook_endpoints (
    id uuid PRIMARY KEY,
    url text NOT NULL CHECK (url LIKE 'https://%' AND length(url) <= 2000),
    -- The signing secret (32 random bytes), sealed like every other secret.
    secret_sealed bytea NOT NULL,
    key_version integer NOT NULL,
    enabled boolean NOT NULL DEFAULT true,
    created_by uuid NOT NULL REFERENCES users (id),
    created_at timestamptz NOT NULL,
    secret_rotated_at timestamptz,
    disabled_at timestamptz
);
CREATE INDEX webhook_endpoints_key_version ON webhook_endpoints (key_version);

CREATE TABLE webhook_messages (
    id uuid PRIMARY KEY,
    event_type text NOT NULL CHECK (event_type ~ '^[a-z][a-z0-9.-]{0,62}$'),
    data jsonb NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE INDEX webhook_messages_recent ON webhook_messages (created_at);

CREATE TABLE webhook_deliveries (
    id uuid PRIMARY KEY,
    message_id uuid NOT NULL REFERENCES webhook_messages (id),
    endpoint_id uuid NOT NULL REFERENCES webhook_endpoints (id),
    state text NOT NULL CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at timestamptz NOT NULL,
    last_attempt_at timestamptz,
    -- A fixed outcome code (`delivered`, `http-status`, `timeout`, `connect`, ...) and the
    -- receiver's HTTP status, never the receiver's text.
    last_outcome text CHECK (last_outcome ~ '^[a-z][a-z0-9-]{0,31}$'),
    last_status integer,
    delivered_at timestamptz,
    created_at timestamptz NOT NULL,
    UNIQUE (message_id, endpoint_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_recent ON webhook_deliveries (created_at);

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'custodian_app') THEN
        GRANT SELECT, INSERT, UPDATE ON webhook_endpoints, webhook_deliveries TO custodian_app;
        GRANT SELECT, INSERT ON webhook_messages TO custodian_app;
    END IF;
END
$$;
