-- Moving a user to another facility changes what they may see (facility-scoped roles),
-- so it is an access change like the others: it takes a reason and is kept in the
-- history, naming the facility the user was moved to.
ALTER TABLE access_changes ADD COLUMN facility_id uuid REFERENCES facilities (id);
ALTER TABLE access_changes DROP CONSTRAINT access_changes_change_check;
ALTER TABLE access_changes ADD CONSTRAINT access_changes_change_check
    CHECK (change IN ('role_granted', 'role_revoked', 'disabled', 'enabled', 'care_team_added', 'care_team_removed', 'facility_set'));
ALTER TABLE access_changes ADD CONSTRAINT access_changes_facility_check
    CHECK ((facility_id IS NOT NULL) = (change = 'facility_set'));
