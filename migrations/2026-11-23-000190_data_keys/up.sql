-- Data-encryption keys (DEKs), stored only wrapped by a key-encryption key (KEK).
-- Exactly one version is `active` (used for new writes); `decrypt_only` versions still
-- protect rows that a rotation has not re-encrypted yet; `retired` versions protect
-- nothing and are never loaded.
CREATE TABLE data_keys (
    version      integer PRIMARY KEY CHECK (version > 0),
    wrapped_key  bytea NOT NULL,
    kek_id       text NOT NULL,
    state        text NOT NULL CHECK (state IN ('active', 'decrypt_only', 'retired')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    activated_at timestamptz,
    retired_at   timestamptz,
    rewrapped_at timestamptz
);

CREATE UNIQUE INDEX data_keys_one_active ON data_keys ((true)) WHERE state = 'active';
