-- Same rules as 2026-12-01-000300_audit_head_append_only, one check written so that it
-- costs an index lookup. "No event beyond the new head" was `EXISTS (… WHERE seq > NEW.seq)`:
-- PL/pgSQL plans it with a parameter, and for an EXISTS the planner picks a sequential
-- scan that expects to stop early, but no row matches, so every append scanned the whole
-- audit trail (append throughput fell with the table's size; reads ran ~40 % slower).
-- `max(seq)` is answered from the end of the primary-key index whatever the table's size.
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
           OR (SELECT max(seq) FROM audit_events) <> NEW.seq THEN
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

-- The writer's connection lives long, and PL/pgSQL keeps a statement's plan for the
-- session: planned while audit_events was small (a fresh database), the lookups above
-- stayed sequential scans as it grew (~2 ms per append at 50,000 events in the
-- benchmark). Planning them each time with the table's current size keeps them index
-- lookups; planning costs microseconds.
ALTER FUNCTION audit_head_forward_only() SET plan_cache_mode = force_custom_plan;
