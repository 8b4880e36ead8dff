-- Break-glass (issue 13): the requester's justification and the privacy officer's review
-- notes are workforce free text about a patient; they are sealed like every other such
-- field (AES-256-GCM envelopes bound to table, column and row id; `key_version` for
-- rotation, `crypto::columns`).
--
-- SQL cannot seal: rows written before this migration keep their text in the clear column
-- until the next start-up seals it and clears the column (`db::break_glass::seal_clear_text`,
-- run before anything is served). A CHECK keeps exactly one of the two per row, and the
-- triggers let the clear text only be removed, never written again.
ALTER TABLE break_glass_grants
    ALTER COLUMN justification DROP NOT NULL,
    DROP CONSTRAINT break_glass_grants_justification_check,
    ADD COLUMN justification_sealed bytea,
    ADD COLUMN key_version integer,
    ADD CONSTRAINT break_glass_grants_sealed_check
        CHECK ((justification IS NULL) = (justification_sealed IS NOT NULL)
               AND (justification_sealed IS NULL) = (key_version IS NULL));
CREATE INDEX break_glass_grants_key_version ON break_glass_grants (key_version);

ALTER TABLE break_glass_reviews
    ADD COLUMN id uuid NOT NULL DEFAULT gen_random_uuid() UNIQUE,
    ALTER COLUMN notes DROP NOT NULL,
    DROP CONSTRAINT break_glass_reviews_notes_check,
    ADD COLUMN notes_sealed bytea,
    ADD COLUMN key_version integer,
    ADD CONSTRAINT break_glass_reviews_sealed_check
        CHECK ((notes IS NULL) = (notes_sealed IS NOT NULL)
               AND (notes_sealed IS NULL) = (key_version IS NULL));
CREATE INDEX break_glass_reviews_key_version ON break_glass_reviews (key_version);

-- A grant: the status moves one way; besides, only the justification's storage may
-- change (sealed, or re-sealed by a key rotation), never back to clear text.
CREATE OR REPLACE FUNCTION break_glass_grants_transitions() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'break_glass_grants rows are never deleted';
    END IF;
    IF NEW.id <> OLD.id OR NEW.user_id <> OLD.user_id OR NEW.patient_id <> OLD.patient_id
        OR NEW.mode <> OLD.mode OR NEW.reason_code <> OLD.reason_code
        OR NEW.requested_at <> OLD.requested_at
        OR (NEW.justification IS NOT NULL
            AND NEW.justification IS DISTINCT FROM OLD.justification) THEN
        RAISE EXCEPTION 'a break-glass grant keeps who, whom, why and when';
    END IF;
    IF NEW.status = OLD.status THEN
        IF NEW.justification_sealed IS NULL
            OR (NEW.facility_id, NEW.minutes, NEW.activated_at, NEW.expires_at, NEW.ended_at,
                NEW.ended_by, NEW.pending_id, NEW.review_due_at, NEW.end_reason)
               IS DISTINCT FROM
               (OLD.facility_id, OLD.minutes, OLD.activated_at, OLD.expires_at, OLD.ended_at,
                OLD.ended_by, OLD.pending_id, OLD.review_due_at, OLD.end_reason) THEN
            RAISE EXCEPTION 'a break-glass grant only changes its status (or the sealing of its justification)';
        END IF;
        RETURN NEW;
    END IF;
    IF NOT ((OLD.status = 'pending' AND NEW.status IN ('active', 'denied', 'withdrawn'))
             OR (OLD.status = 'active' AND NEW.status IN ('revoked', 'expired')))
        OR NEW.justification IS DISTINCT FROM OLD.justification
        OR NEW.justification_sealed IS DISTINCT FROM OLD.justification_sealed THEN
        RAISE EXCEPTION 'a break-glass grant only moves pending -> active|denied|withdrawn, active -> revoked|expired';
    END IF;
    RETURN NEW;
END
$$;

-- A review is append-only; only its notes' storage may change (sealed, or re-sealed by a
-- key rotation), never back to clear text.
CREATE FUNCTION break_glass_reviews_seal_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' OR TG_OP = 'TRUNCATE' THEN
        RAISE EXCEPTION 'break_glass_reviews rows are never changed or deleted';
    END IF;
    IF NEW.seq <> OLD.seq OR NEW.id <> OLD.id OR NEW.grant_id <> OLD.grant_id
        OR NEW.verdict <> OLD.verdict OR NEW.reviewer <> OLD.reviewer
        OR NEW.reviewed_at <> OLD.reviewed_at
        OR NEW.notes IS NOT NULL OR NEW.notes_sealed IS NULL THEN
        RAISE EXCEPTION 'break_glass_reviews rows are never changed or deleted';
    END IF;
    RETURN NEW;
END
$$;
DROP TRIGGER break_glass_reviews_append_only ON break_glass_reviews;
CREATE TRIGGER break_glass_reviews_seal_only
    BEFORE UPDATE OR DELETE ON break_glass_reviews
    FOR EACH ROW EXECUTE FUNCTION break_glass_reviews_seal_only();

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'custodian_app') THEN
        GRANT UPDATE ON break_glass_reviews TO custodian_app;
    END IF;
END
$$;
