-- Back to the trigger of 2026-11-23-000100_audit (position and checkpoint number only).
CREATE OR REPLACE FUNCTION audit_head_forward_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.seq < OLD.seq OR NEW.checkpoint_no < OLD.checkpoint_no OR NEW.id IS DISTINCT FROM OLD.id THEN
        RAISE EXCEPTION 'the audit chain head only moves forward'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;
