DROP INDEX audit_events_break_glass;
CREATE INDEX audit_events_actor_user ON audit_events (actor_user_id) WHERE actor_user_id IS NOT NULL;
DROP INDEX audit_events_actor_seq;
