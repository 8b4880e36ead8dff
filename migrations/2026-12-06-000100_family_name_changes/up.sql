-- An administrator setting or clearing a person's family name (kept as its blind index
-- only, users.family_index) changes what the same-family-name detector sees about that
-- person: an access-level change like the others, with a reason in the history.
ALTER TABLE access_changes DROP CONSTRAINT access_changes_change_check;
ALTER TABLE access_changes ADD CONSTRAINT access_changes_change_check
    CHECK (change IN ('role_granted', 'role_revoked', 'disabled', 'enabled', 'care_team_added', 'care_team_removed', 'facility_set', 'family_name_set', 'family_name_cleared'));
