DROP TABLE pending_changes;
DROP FUNCTION pending_changes_decide_once();
