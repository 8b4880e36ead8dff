ALTER TABLE pending_changes DROP CONSTRAINT pending_changes_kind_check;
ALTER TABLE pending_changes ADD CONSTRAINT pending_changes_kind_check CHECK (kind IN ('admin-change'));
DROP TABLE break_glass_grants;
DROP FUNCTION break_glass_grants_transitions();
DROP TABLE confidentiality_changes;
ALTER TABLE patients DROP COLUMN confidentiality;
