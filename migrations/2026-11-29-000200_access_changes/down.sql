DROP TABLE access_changes;
