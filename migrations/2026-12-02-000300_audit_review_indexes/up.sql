-- Audit review (privacy officers): the console's audit search pages newest-first by seq
-- under a filter. One person's events by (actor, seq) serve "this person, newest first"
-- from the index's end without sorting all of that person's events; it supersedes the
-- plain actor index. Break-glass reviews filter on the grant.
CREATE INDEX audit_events_actor_seq ON audit_events (actor_user_id, seq)
    WHERE actor_user_id IS NOT NULL;
DROP INDEX audit_events_actor_user;
CREATE INDEX audit_events_break_glass ON audit_events (break_glass_grant_id, seq)
    WHERE break_glass_grant_id IS NOT NULL;
