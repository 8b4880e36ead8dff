DROP INDEX patients_name_infixes;
ALTER TABLE patients DROP COLUMN name_infixes;
