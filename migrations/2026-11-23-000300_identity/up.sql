-- People and services known to Custodian, keyed by (issuer, subject) from the identity
-- provider. Roles and care relationships live here, not in tokens, so a change takes
-- effect on the very next request.
CREATE TABLE users (
    id uuid PRIMARY KEY,
    issuer text NOT NULL CHECK (length(issuer) <= 512),
    subject text NOT NULL CHECK (length(subject) <= 255),
    kind text NOT NULL CHECK (kind IN ('person', 'service')),
    -- Workforce display name (not PHI); bounded.
    display_name text CHECK (length(display_name) <= 200),
    facility_id uuid REFERENCES facilities (id),
    -- Set for users with the patient role: the one record they may read.
    patient_id uuid REFERENCES patients (id),
    disabled_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (issuer, subject)
);

CREATE TABLE role_assignments (
    user_id uuid NOT NULL REFERENCES users (id),
    role text NOT NULL CHECK (role IN ('clinician', 'billing', 'patient', 'admin', 'privacy_officer', 'service')),
    reason text NOT NULL CHECK (length(reason) BETWEEN 3 AND 500),
    granted_by uuid REFERENCES users (id),
    granted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, role)
);

CREATE TABLE care_team_members (
    patient_id uuid NOT NULL REFERENCES patients (id),
    user_id uuid NOT NULL REFERENCES users (id),
    added_by uuid REFERENCES users (id),
    added_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (patient_id, user_id)
);
CREATE INDEX care_team_members_by_user ON care_team_members (user_id, patient_id);

-- The application role (created by the audit migration when allowed) may read and write
-- the data tables; rows are soft-deleted, so DELETE is granted only where a relationship
-- is removed. The audit tables keep their INSERT/SELECT-only grants.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'custodian_app') THEN
        GRANT SELECT, INSERT, UPDATE ON facilities, patients, observations, document_references,
            claims, claim_items, data_keys, users TO custodian_app;
        GRANT SELECT, INSERT, UPDATE, DELETE ON role_assignments, care_team_members TO custodian_app;
    END IF;
END
$$;
