DROP TABLE alert_suppressions;
DROP TABLE privacy_case_events;
DROP TABLE privacy_case_alerts;
DROP TABLE privacy_cases;
DROP FUNCTION privacy_no_truncate();
DROP FUNCTION alert_suppressions_revoke_only();
DROP FUNCTION privacy_case_events_seal_only();
DROP FUNCTION privacy_cases_transitions();
