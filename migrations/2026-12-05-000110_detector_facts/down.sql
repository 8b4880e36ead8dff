ALTER TABLE facilities DROP COLUMN time_zone, DROP COLUMN work_end_hour, DROP COLUMN work_start_hour;
ALTER TABLE users DROP CONSTRAINT users_family_index_pair,
    DROP COLUMN family_index_source, DROP COLUMN family_index;
