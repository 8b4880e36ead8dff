-- Back to the function of 2026-12-01-000300_audit_head_append_only.
ALTER FUNCTION audit_head_forward_only() RESET plan_cache_mode;
CREATE OR REPLACE FUNCTION audit_head_forward_only() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    tail_hash BYTEA;
    covered   BIGINT;
    cp        audit_checkpoints%ROWTYPE;
BEGIN
    IF NEW.seq < OLD.seq OR NEW.checkpoint_no < OLD.checkpoint_no OR NEW.id IS DISTINCT FROM OLD.id THEN
        RAISE EXCEPTION 'the audit chain head only moves forward'
            USING ERRCODE = 'insufficient_privilege';
    END IF;

    IF NEW.seq = OLD.seq THEN
        IF NEW.hash IS DISTINCT FROM OLD.hash THEN
            RAISE EXCEPTION 'the audit chain head is append-only: its hash changes only when it advances'
                USING ERRCODE = 'insufficient_privilege';
        END IF;
    ELSE
        SELECT hash INTO tail_hash FROM audit_events WHERE seq = NEW.seq;
        SELECT count(*) INTO covered FROM audit_events WHERE seq > OLD.seq AND seq <= NEW.seq;
        IF tail_hash IS DISTINCT FROM NEW.hash
           OR covered <> NEW.seq - OLD.seq
           OR EXISTS (SELECT 1 FROM audit_events WHERE seq > NEW.seq) THEN
            RAISE EXCEPTION 'the audit chain head is append-only: it may only advance to the last appended event and its hash'
                USING ERRCODE = 'insufficient_privilege';
        END IF;
    END IF;

    IF NEW.checkpoint_no = OLD.checkpoint_no THEN
        IF NEW.checkpoint_seq IS DISTINCT FROM OLD.checkpoint_seq
           OR NEW.checkpoint_at IS DISTINCT FROM OLD.checkpoint_at THEN
            RAISE EXCEPTION 'the audit chain head is append-only: its checkpoint changes only with a new checkpoint'
                USING ERRCODE = 'insufficient_privilege';
        END IF;
    ELSE
        SELECT * INTO cp FROM audit_checkpoints WHERE checkpoint_no = NEW.checkpoint_no;
        IF NOT FOUND
           OR NEW.checkpoint_no <> OLD.checkpoint_no + 1
           OR cp.seq <> NEW.checkpoint_seq
           OR cp.seq <> NEW.seq
           OR cp.head_hash <> NEW.hash
           OR cp.created_at <> NEW.checkpoint_at THEN
            RAISE EXCEPTION 'the audit chain head is append-only: it may only move to the next written checkpoint'
                USING ERRCODE = 'insufficient_privilege';
        END IF;
    END IF;
    RETURN NEW;
END
$$;
