DROP TABLE reidentifications;
DROP FUNCTION reidentifications_seal_only();
