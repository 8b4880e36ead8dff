ALTER TABLE pending_changes DROP CONSTRAINT pending_changes_check;
ALTER TABLE pending_changes ADD CONSTRAINT pending_changes_check
    CHECK ((status = 'pending') = (decided_by IS NULL));
ALTER TABLE pending_changes DROP CONSTRAINT pending_changes_status_check;
ALTER TABLE pending_changes ADD CONSTRAINT pending_changes_status_check
    CHECK (status IN ('pending', 'approved', 'denied'));

CREATE OR REPLACE FUNCTION break_glass_grants_transitions() RETURNS trigger
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
ALTER TABLE break_glass_grants DROP CONSTRAINT break_glass_grants_check1;
ALTER TABLE break_glass_grants ADD CONSTRAINT break_glass_grants_check1
    CHECK (status = 'pending' OR status = 'denied' OR activated_at IS NOT NULL);
ALTER TABLE break_glass_grants DROP CONSTRAINT break_glass_grants_status_check;
ALTER TABLE break_glass_grants ADD CONSTRAINT break_glass_grants_status_check
    CHECK (status IN ('pending', 'active', 'denied', 'revoked', 'expired'));
