DROP INDEX patients_name_prefixes;
ALTER TABLE patients DROP COLUMN name_prefixes;
