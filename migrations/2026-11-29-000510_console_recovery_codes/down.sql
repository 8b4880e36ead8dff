DROP TABLE console_recovery_codes;
