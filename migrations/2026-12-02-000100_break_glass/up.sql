-- Break-glass (issue 13).
--
-- 1. The confidentiality of a patient record (HL7 v3 Confidentiality: N normal,
--    R restricted, V very restricted). The policy in src/policy/confidentiality.rs says
--    which basis of access each level admits.
ALTER TABLE patients ADD COLUMN confidentiality text NOT NULL DEFAULT 'N'
    CHECK (confidentiality IN ('N', 'R', 'V'));

-- 2. The history of confidentiality changes, with the administrator's reason: the
--    patient-side part of the access-change history (access_changes holds the
--    person-side part). Append-only, written in the same transaction as the change.
CREATE TABLE confidentiality_changes (
    seq bigserial PRIMARY KEY,
    patient_id uuid NOT NULL REFERENCES patients (id),
    previous text NOT NULL CHECK (previous IN ('N', 'R', 'V')),
    confidentiality text NOT NULL CHECK (confidentiality IN ('N', 'R', 'V')),
    reason text NOT NULL CHECK (length(reason) BETWEEN 3 AND 500),
    changed_by uuid REFERENCES users (id),
    changed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX confidentiality_changes_by_patient ON confidentiality_changes (patient_id, seq);

-- 3. Break-glass grants: one user, one patient, time-boxed. `status` moves
--    pending -> active | denied, active -> revoked | expired, and nowhere else (trigger).
--    Expiry is decided by `expires_at` against the application's clock on every request;
--    `status = 'expired'` is written when the expiry is noticed (and audited then).
--    The justification is workforce free text (like access-change reasons): kept here,
--    never in the audit trail or the logs.
CREATE TABLE break_glass_grants (
    id uuid PRIMARY KEY,
    user_id uuid NOT NULL REFERENCES users (id),
    patient_id uuid NOT NULL REFERENCES patients (id),
    facility_id uuid NOT NULL REFERENCES facilities (id),
    mode text NOT NULL CHECK (mode IN ('emergency', 'approval')),
    reason_code text NOT NULL CHECK (reason_code ~ '^[a-z][a-z0-9-]{0,63}$'),
    justification text NOT NULL CHECK (length(justification) BETWEEN 20 AND 1000),
    minutes integer NOT NULL CHECK (minutes BETWEEN 1 AND 1440),
    status text NOT NULL CHECK (status IN ('pending', 'active', 'denied', 'revoked', 'expired')),
    requested_at timestamptz NOT NULL,
    activated_at timestamptz,
    expires_at timestamptz,
    ended_at timestamptz,
    ended_by uuid REFERENCES users (id),
    pending_id uuid REFERENCES pending_changes (id),
    review_due_at timestamptz NOT NULL,
    -- Why an administrator or privacy officer ended it (workforce free text).
    end_reason text CHECK (length(end_reason) BETWEEN 3 AND 500),
    CHECK ((activated_at IS NULL) = (expires_at IS NULL)),
    CHECK (status = 'pending' OR status = 'denied' OR activated_at IS NOT NULL),
    CHECK ((status IN ('pending', 'active')) = (ended_at IS NULL))
);
CREATE INDEX break_glass_grants_active ON break_glass_grants (user_id, patient_id)
    WHERE status = 'active';
CREATE INDEX break_glass_grants_by_time ON break_glass_grants (requested_at);

CREATE FUNCTION break_glass_grants_transitions() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'break_glass_grants rows are never deleted';
    END IF;
    IF NEW.id <> OLD.id OR NEW.user_id <> OLD.user_id OR NEW.patient_id <> OLD.patient_id
        OR NEW.mode <> OLD.mode OR NEW.reason_code <> OLD.reason_code
        OR NEW.justification <> OLD.justification OR NEW.requested_at <> OLD.requested_at
        OR NOT ((OLD.status = 'pending' AND NEW.status IN ('active', 'denied'))
             OR (OLD.status = 'active' AND NEW.status IN ('revoked', 'expired'))) THEN
        RAISE EXCEPTION 'a break-glass grant only moves pending -> active|denied -> revoked|expired';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER break_glass_grants_transitions
    BEFORE UPDATE OR DELETE ON break_glass_grants
    FOR EACH ROW EXECUTE FUNCTION break_glass_grants_transitions();

-- Break-glass requests share the approval queue under their own kind.
ALTER TABLE pending_changes DROP CONSTRAINT pending_changes_kind_check;
ALTER TABLE pending_changes ADD CONSTRAINT pending_changes_kind_check
    CHECK (kind IN ('admin-change', 'break-glass'));

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'custodian_app') THEN
        GRANT SELECT, INSERT ON confidentiality_changes TO custodian_app;
        GRANT USAGE ON SEQUENCE confidentiality_changes_seq_seq TO custodian_app;
        GRANT SELECT, INSERT, UPDATE ON break_glass_grants TO custodian_app;
    END IF;
END
$$;
