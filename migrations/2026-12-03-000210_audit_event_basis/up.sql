-- Why an access was allowed, as the decision point said when the event was recorded
-- (issue 14: the access report tells care team from facility). NULL: not an access
-- decided on a relationship (refusals, console and administration events, and events
-- recorded before this column existed). A nullable column without a default is a
-- catalogue change only: no table rewrite, and the write path stays one INSERT.
ALTER TABLE audit_events
    ADD COLUMN basis text CHECK (basis IN ('care-team', 'facility', 'own-record', 'break-glass'));
COMMENT ON COLUMN audit_events.basis IS
    'the policy basis of a permitted access (care-team, facility, own-record, break-glass)';
