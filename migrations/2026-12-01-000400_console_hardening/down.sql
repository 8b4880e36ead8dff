ALTER TABLE console_totp DROP COLUMN lockouts;
DROP INDEX console_sessions_pre_login_by_source;
ALTER TABLE console_sessions DROP COLUMN source_addr;
-- Back to one kept change per session: keep the newest of each.
DELETE FROM console_pending_actions a USING console_pending_actions b
    WHERE a.session_hash = b.session_hash AND a.created_at < b.created_at;
DROP INDEX console_pending_actions_by_session;
ALTER TABLE console_pending_actions DROP CONSTRAINT console_pending_actions_pkey;
ALTER TABLE console_pending_actions DROP COLUMN id;
ALTER TABLE console_pending_actions ADD PRIMARY KEY (session_hash);
