DROP TABLE emergency_accounts;
