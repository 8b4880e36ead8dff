-- Alerts and cases (issue 15, item 2): privacy officers group alerts into cases, work them
-- to a verdict, and suppress alerts that a known relationship explains.
--
-- Free text (case notes, suppression reasons) is workforce text about a person and a
-- patient: sealed like break-glass review notes (AES-256-GCM bound to table, column and
-- row id; `key_version` for rotation, `crypto::columns`). Everything else is ids and codes.

-- A case: its current state. The state moves one way (open -> investigating -> closed-*;
-- a closed case never changes again); every change is also a row of `privacy_case_events`.
CREATE TABLE privacy_cases (
    id uuid PRIMARY KEY,
    status text NOT NULL CHECK (status IN ('open', 'investigating', 'closed-appropriate', 'closed-violation')),
    owner uuid NOT NULL REFERENCES users (id),
    -- The sanction applied (HIPAA 164.308(a)(1)(ii)(C)), a code; only on a violation.
    sanction text CHECK (sanction IS NULL OR sanction ~ '^[a-z][a-z-]{1,40}$'),
    opened_by uuid NOT NULL REFERENCES users (id),
    opened_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    closed_at timestamptz,
    CHECK ((status = 'closed-violation') = (sanction IS NOT NULL)),
    CHECK ((status IN ('closed-appropriate', 'closed-violation')) = (closed_at IS NOT NULL))
);
CREATE INDEX privacy_cases_by_status ON privacy_cases (status, opened_at);

CREATE FUNCTION privacy_cases_transitions() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'privacy_cases rows are never deleted';
    END IF;
    IF NEW.id <> OLD.id OR NEW.opened_by <> OLD.opened_by OR NEW.opened_at <> OLD.opened_at THEN
        RAISE EXCEPTION 'a case keeps who opened it and when';
    END IF;
    IF OLD.status IN ('closed-appropriate', 'closed-violation') THEN
        RAISE EXCEPTION 'a closed case never changes';
    END IF;
    IF OLD.status = 'investigating' AND NEW.status = 'open' THEN
        RAISE EXCEPTION 'a case moves open -> investigating -> closed, never back';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER privacy_cases_transitions
    BEFORE UPDATE OR DELETE ON privacy_cases
    FOR EACH ROW EXECUTE FUNCTION privacy_cases_transitions();

-- Which case an alert belongs to: one case per alert, for good (append-only).
CREATE TABLE privacy_case_alerts (
    alert_id uuid PRIMARY KEY REFERENCES alerts (id),
    case_id uuid NOT NULL REFERENCES privacy_cases (id),
    added_by uuid NOT NULL REFERENCES users (id),
    added_at timestamptz NOT NULL
);
CREATE INDEX privacy_case_alerts_by_case ON privacy_case_alerts (case_id);
CREATE TRIGGER privacy_case_alerts_append_only
    BEFORE UPDATE OR DELETE ON privacy_case_alerts
    FOR EACH ROW EXECUTE FUNCTION append_only();

-- A case's history: append-only; only a note's storage may change (re-sealed by a key
-- rotation, which also moves `key_version`), never deleted.
CREATE TABLE privacy_case_events (
    seq bigserial PRIMARY KEY,
    id uuid NOT NULL UNIQUE,
    case_id uuid NOT NULL REFERENCES privacy_cases (id),
    actor uuid NOT NULL REFERENCES users (id),
    at timestamptz NOT NULL,
    action text NOT NULL CHECK (action IN ('opened', 'assigned', 'status', 'note', 'alerts-added', 'closed')),
    status text CHECK (status IS NULL OR status IN ('open', 'investigating', 'closed-appropriate', 'closed-violation')),
    owner uuid REFERENCES users (id),
    sanction text CHECK (sanction IS NULL OR sanction ~ '^[a-z][a-z-]{1,40}$'),
    alerts integer CHECK (alerts IS NULL OR alerts >= 0),
    note_sealed bytea,
    -- Set on every row (key rotation walks the table by it); names the key of the note,
    -- if there is one.
    key_version integer NOT NULL
);
CREATE INDEX privacy_case_events_by_case ON privacy_case_events (case_id, seq);
CREATE INDEX privacy_case_events_key_version ON privacy_case_events (key_version);

CREATE FUNCTION privacy_case_events_seal_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'privacy_case_events rows are never changed or deleted';
    END IF;
    IF (NEW.seq, NEW.id, NEW.case_id, NEW.actor, NEW.at, NEW.action, NEW.status, NEW.owner,
        NEW.sanction, NEW.alerts)
       IS DISTINCT FROM
       (OLD.seq, OLD.id, OLD.case_id, OLD.actor, OLD.at, OLD.action, OLD.status, OLD.owner,
        OLD.sanction, OLD.alerts)
        OR (OLD.note_sealed IS NULL) <> (NEW.note_sealed IS NULL) THEN
        RAISE EXCEPTION 'privacy_case_events rows are never changed or deleted';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER privacy_case_events_seal_only
    BEFORE UPDATE OR DELETE ON privacy_case_events
    FOR EACH ROW EXECUTE FUNCTION privacy_case_events_seal_only();

-- Suppressions: "this person is this patient's guardian" — alerts about this person and
-- this patient (of one kind, or every kind) are not raised until the expiry. Revoked, never
-- deleted; the reason is sealed.
CREATE TABLE alert_suppressions (
    id uuid PRIMARY KEY,
    user_id uuid NOT NULL REFERENCES users (id),
    patient_id uuid NOT NULL REFERENCES patients (id),
    kind text CHECK (kind IS NULL OR kind ~ '^[a-z][a-z0-9-]{1,62}$'),
    reason_sealed bytea NOT NULL,
    key_version integer NOT NULL,
    created_by uuid NOT NULL REFERENCES users (id),
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL CHECK (expires_at > created_at),
    revoked_at timestamptz,
    revoked_by uuid REFERENCES users (id),
    CHECK ((revoked_at IS NULL) = (revoked_by IS NULL))
);
CREATE INDEX alert_suppressions_pair ON alert_suppressions (user_id, patient_id);
CREATE INDEX alert_suppressions_key_version ON alert_suppressions (key_version);

CREATE FUNCTION alert_suppressions_revoke_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'alert_suppressions rows are never deleted';
    END IF;
    IF (NEW.id, NEW.user_id, NEW.patient_id, NEW.kind, NEW.created_by, NEW.created_at, NEW.expires_at)
       IS DISTINCT FROM
       (OLD.id, OLD.user_id, OLD.patient_id, OLD.kind, OLD.created_by, OLD.created_at, OLD.expires_at)
        OR (OLD.revoked_at IS NOT NULL
            AND (NEW.revoked_at, NEW.revoked_by) IS DISTINCT FROM (OLD.revoked_at, OLD.revoked_by)) THEN
        RAISE EXCEPTION 'a suppression is only revoked (once) or re-sealed';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER alert_suppressions_revoke_only
    BEFORE UPDATE OR DELETE ON alert_suppressions
    FOR EACH ROW EXECUTE FUNCTION alert_suppressions_revoke_only();

-- TRUNCATE skips row triggers: refuse it on the append-only tables.
CREATE FUNCTION privacy_no_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is never truncated', TG_TABLE_NAME;
END
$$;
CREATE TRIGGER privacy_cases_no_truncate BEFORE TRUNCATE ON privacy_cases
    FOR EACH STATEMENT EXECUTE FUNCTION privacy_no_truncate();
CREATE TRIGGER privacy_case_alerts_no_truncate BEFORE TRUNCATE ON privacy_case_alerts
    FOR EACH STATEMENT EXECUTE FUNCTION privacy_no_truncate();
CREATE TRIGGER privacy_case_events_no_truncate BEFORE TRUNCATE ON privacy_case_events
    FOR EACH STATEMENT EXECUTE FUNCTION privacy_no_truncate();
CREATE TRIGGER alert_suppressions_no_truncate BEFORE TRUNCATE ON alert_suppressions
    FOR EACH STATEMENT EXECUTE FUNCTION privacy_no_truncate();

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'custodian_app') THEN
        GRANT SELECT, INSERT, UPDATE ON privacy_cases TO custodian_app;
        GRANT SELECT, INSERT ON privacy_case_alerts TO custodian_app;
        GRANT SELECT, INSERT, UPDATE ON privacy_case_events TO custodian_app;
        GRANT USAGE ON SEQUENCE privacy_case_events_seq_seq TO custodian_app;
        GRANT SELECT, INSERT, UPDATE ON alert_suppressions TO custodian_app;
    END IF;
END
$$;
