-- Detectors of issue 15, part 3 (same family name, off-hours).
--
-- same-family-name: a person's family name, only as its blind index (HMAC-SHA256 with
-- the blind-index key, the same normalisation and domain as `patients.family_index`), so
-- the detector compares indexes and never a name. `family_index_source` says where it
-- came from: the sign-in provider's `family_name` claim, or an administrator (who wins:
-- a later claim does not overwrite an administrator's value).
ALTER TABLE users
    ADD COLUMN family_index bytea CHECK (family_index IS NULL OR octet_length(family_index) = 32),
    ADD COLUMN family_index_source text CHECK (family_index_source IN ('provider', 'admin')),
    ADD CONSTRAINT users_family_index_pair
        CHECK ((family_index IS NULL) = (family_index_source IS NULL));

-- off-hours: a facility's working hours (local, [start, end)) and IANA time zone; NULL
-- takes the `[detect]` defaults.
ALTER TABLE facilities
    ADD COLUMN work_start_hour smallint CHECK (work_start_hour BETWEEN 0 AND 23),
    ADD COLUMN work_end_hour smallint CHECK (work_end_hour BETWEEN 1 AND 24),
    ADD COLUMN time_zone text CHECK (time_zone IS NULL OR length(time_zone) <= 64);
