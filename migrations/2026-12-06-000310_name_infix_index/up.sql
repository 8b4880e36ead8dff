-- `:contains` search on sealed names: the keyed blind indexes (HMAC-SHA256 with the
-- blind-index key, domains family_infix / given_infix) of every substring of 3-40
-- characters of each word of the family and given names. NULL means "not computed yet":
-- SQL has no blind-index key, so rows written before this migration get theirs from
-- `custodian keys index-names` (new and updated rows get them with every write).
ALTER TABLE patients ADD COLUMN name_infixes bytea[];
CREATE INDEX patients_name_infixes ON patients USING gin (name_infixes);
