-- The approval queue (separation of duties): a change that needs a second person is kept
-- here until another administrator approves or denies it. `kind` says what waits: an
-- administration change ('admin-change', the typed admin::Op as JSON in `payload`) now;
-- break-glass requests are meant to share the queue under their own kind later.
-- `target_user_id` is the person whose access would change. Reasons are workforce free
-- text (not PHI), kept here and never in the audit trail.
CREATE TABLE pending_changes (
    id uuid PRIMARY KEY,
    kind text NOT NULL CHECK (kind IN ('admin-change')),
    payload jsonb NOT NULL,
    target_user_id uuid REFERENCES users (id),
    requested_by uuid NOT NULL REFERENCES users (id),
    requested_at timestamptz NOT NULL DEFAULT now(),
    status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'approved', 'denied')),
    decided_by uuid REFERENCES users (id),
    decided_at timestamptz,
    decision_reason text CHECK (length(decision_reason) BETWEEN 3 AND 500),
    CHECK ((status = 'pending') = (decided_by IS NULL)),
    CHECK ((decided_by IS NULL) = (decided_at IS NULL)),
    CHECK ((decided_by IS NULL) = (decision_reason IS NULL)),
    -- Two people, enforced by the database too: nobody decides their own request or a
    -- change to their own access.
    CHECK (decided_by <> requested_by),
    CHECK (decided_by <> target_user_id)
);
CREATE INDEX pending_changes_open ON pending_changes (requested_at) WHERE status = 'pending';

-- A request is decided once: only a pending row may change, only to a decision, and
-- nothing but the decision columns may change. Rows are never deleted.
CREATE FUNCTION pending_changes_decide_once() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'pending_changes rows are never deleted';
    END IF;
    IF OLD.status <> 'pending'
        OR NEW.id <> OLD.id
        OR NEW.kind <> OLD.kind
        OR NEW.payload <> OLD.payload
        OR NEW.target_user_id IS DISTINCT FROM OLD.target_user_id
        OR NEW.requested_by <> OLD.requested_by
        OR NEW.requested_at <> OLD.requested_at THEN
        RAISE EXCEPTION 'a pending change is decided once and otherwise never changes';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER pending_changes_decide_once
    BEFORE UPDATE OR DELETE ON pending_changes
    FOR EACH ROW EXECUTE FUNCTION pending_changes_decide_once();

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'custodian_app') THEN
        GRANT SELECT, INSERT, UPDATE ON pending_changes TO custodian_app;
    END IF;
END
$$;
