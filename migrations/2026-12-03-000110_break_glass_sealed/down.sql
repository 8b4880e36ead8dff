-- Sealed text cannot be opened in SQL: going down needs no sealed row (refused otherwise).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM break_glass_grants WHERE justification_sealed IS NOT NULL)
        OR EXISTS (SELECT 1 FROM break_glass_reviews WHERE notes_sealed IS NOT NULL) THEN
        RAISE EXCEPTION 'sealed justifications or review notes exist: cannot go below 2026-12-03-000110';
    END IF;
END
$$;
DROP TRIGGER break_glass_reviews_seal_only ON break_glass_reviews;
DROP FUNCTION break_glass_reviews_seal_only();
CREATE TRIGGER break_glass_reviews_append_only
    BEFORE UPDATE OR DELETE ON break_glass_reviews
    FOR EACH ROW EXECUTE FUNCTION append_only();
ALTER TABLE break_glass_reviews
    DROP CONSTRAINT break_glass_reviews_sealed_check,
    DROP COLUMN key_version,
    DROP COLUMN notes_sealed,
    DROP COLUMN id,
    ALTER COLUMN notes SET NOT NULL,
    ADD CONSTRAINT break_glass_reviews_notes_check CHECK (length(notes) BETWEEN 3 AND 2000);
ALTER TABLE break_glass_grants
    DROP CONSTRAINT break_glass_grants_sealed_check,
    DROP COLUMN key_version,
    DROP COLUMN justification_sealed,
    ALTER COLUMN justification SET NOT NULL,
    ADD CONSTRAINT break_glass_grants_justification_check
        CHECK (length(justification) BETWEEN 20 AND 1000);

CREATE OR REPLACE FUNCTION break_glass_grants_transitions() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'break_glass_grants rows are never deleted';
    END IF;
    IF NEW.id <> OLD.id OR NEW.user_id <> OLD.user_id OR NEW.patient_id <> OLD.patient_id
        OR NEW.mode <> OLD.mode OR NEW.reason_code <> OLD.reason_code
        OR NEW.justification <> OLD.justification OR NEW.requested_at <> OLD.requested_at
        OR NOT ((OLD.status = 'pending' AND NEW.status IN ('active', 'denied', 'withdrawn'))
             OR (OLD.status = 'active' AND NEW.status IN ('revoked', 'expired'))) THEN
        RAISE EXCEPTION 'a break-glass grant only moves pending -> active|denied|withdrawn, active -> revoked|expired';
    END IF;
    RETURN NEW;
END
$$;
