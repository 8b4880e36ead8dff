-- Console hardening (issue 18, findings 13 and 14).
--
-- Step-up: every kept change has its own id, shown on its step-up page and submitted
-- with the code, so a second change posted from the same session is kept beside the
-- first instead of replacing it (the code typed on a page performs that page's change).
ALTER TABLE console_pending_actions DROP CONSTRAINT console_pending_actions_pkey;
ALTER TABLE console_pending_actions ADD COLUMN id uuid NOT NULL DEFAULT gen_random_uuid();
ALTER TABLE console_pending_actions ADD PRIMARY KEY (id);
CREATE INDEX console_pending_actions_by_session ON console_pending_actions (session_hash);

-- Pre-login sessions are bounded per source address: the address that started one.
ALTER TABLE console_sessions ADD COLUMN source_addr text;
CREATE INDEX console_sessions_pre_login_by_source ON console_sessions (source_addr)
    WHERE stage = 'pre_login';

-- The TOTP lock-out escalates: lock-outs in a row since the last accepted code.
ALTER TABLE console_totp ADD COLUMN lockouts integer NOT NULL DEFAULT 0
    CHECK (lockouts >= 0);
