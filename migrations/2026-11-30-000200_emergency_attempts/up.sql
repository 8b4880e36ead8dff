-- Emergency sign-in attempts per source address and per account name, counted in the
-- database so that every instance behind a load balancer shares one limit (like the TOTP
-- lock-out in console_totp). Keys are SHA-256 hashes of "ip:<address>" / "name:<name>";
-- a row counts the attempts of the minute that started at window_start.
CREATE TABLE console_emergency_attempts (
    key_hash bytea PRIMARY KEY CHECK (length(key_hash) = 32),
    window_start timestamptz NOT NULL,
    attempts integer NOT NULL CHECK (attempts > 0)
);

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'custodian_app') THEN
        GRANT SELECT, INSERT, UPDATE, DELETE ON console_emergency_attempts TO custodian_app;
    END IF;
END
$$;
