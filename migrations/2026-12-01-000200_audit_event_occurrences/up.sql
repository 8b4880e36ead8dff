-- An aggregated audit event (a rate-limited flood: one event per source per window)
-- records how many refused requests it stands for. NULL: the event is one request.
-- Adding a column is DDL: the append-only trigger (UPDATE/DELETE/TRUNCATE) is unaffected,
-- and custodian_app's table-level INSERT covers the new column.
ALTER TABLE audit_events
    ADD COLUMN occurrences integer CHECK (occurrences IS NULL OR occurrences >= 1);
COMMENT ON COLUMN audit_events.occurrences IS
    'number of refused requests an aggregated event stands for; NULL for one request';
