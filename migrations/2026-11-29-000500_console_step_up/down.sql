DROP TABLE console_pending_actions;
ALTER TABLE console_sessions DROP COLUMN totp_at;
