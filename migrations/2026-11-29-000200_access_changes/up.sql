-- The history of access changes with the reason the administrator gave: role granted or
-- revoked, account disabled or enabled, care-team membership added or removed. One row
-- per change, written in the same transaction as the change; never updated or deleted by
-- the application. Reasons are workforce free text, not PHI, and deliberately kept out
-- of the audit trail (which holds internal ids only); the audit event of the same
-- request records who made the change and when.
CREATE TABLE access_changes (
    seq bigserial PRIMARY KEY,
    user_id uuid NOT NULL REFERENCES users (id),
    change text NOT NULL CHECK (change IN ('role_granted', 'role_revoked', 'disabled', 'enabled', 'care_team_added', 'care_team_removed')),
    role text CHECK (role IN ('clinician', 'billing', 'patient', 'admin', 'privacy_officer', 'service')),
    patient_id uuid REFERENCES patients (id),
    reason text NOT NULL CHECK (length(reason) BETWEEN 3 AND 500),
    changed_by uuid REFERENCES users (id),
    changed_at timestamptz NOT NULL DEFAULT now(),
    CHECK ((role IS NOT NULL) = (change IN ('role_granted', 'role_revoked'))),
    CHECK ((patient_id IS NOT NULL) = (change IN ('care_team_added', 'care_team_removed')))
);
CREATE INDEX access_changes_by_user ON access_changes (user_id, seq);

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'custodian_app') THEN
        GRANT SELECT, INSERT ON access_changes TO custodian_app;
        GRANT USAGE ON SEQUENCE access_changes_seq_seq TO custodian_app;
    END IF;
END
$$;
