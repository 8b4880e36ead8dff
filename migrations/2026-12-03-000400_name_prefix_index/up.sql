-- Starts-with search on sealed names: the keyed blind indexes (HMAC-SHA256 with the
-- blind-index key) of every word-start prefix of 3-40 characters of the family and given
-- names. NULL means "not computed yet": SQL cannot compute HMACs with a key it does not
-- hold, so rows written before this migration get theirs from `custodian keys index-names`
-- (new and updated rows get them with every write).
ALTER TABLE patients ADD COLUMN name_prefixes bytea[];
CREATE INDEX patients_name_prefixes ON patients USING gin (name_prefixes);
