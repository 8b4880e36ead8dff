DELETE FROM access_changes WHERE change IN ('family_name_set', 'family_name_cleared');
ALTER TABLE access_changes DROP CONSTRAINT access_changes_change_check;
ALTER TABLE access_changes ADD CONSTRAINT access_changes_change_check
    CHECK (change IN ('role_granted', 'role_revoked', 'disabled', 'enabled', 'care_team_added', 'care_team_removed', 'facility_set'));
