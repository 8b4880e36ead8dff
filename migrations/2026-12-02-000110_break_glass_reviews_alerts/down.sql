DROP TRIGGER confidentiality_changes_append_only ON confidentiality_changes;
DROP TABLE alerts;
DROP TABLE break_glass_reviews;
DROP FUNCTION append_only();
