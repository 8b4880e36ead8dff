ALTER TABLE audit_events DROP COLUMN occurrences;
