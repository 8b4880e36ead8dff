-- Baseline: Custodian keeps its data in the public schema of its own database.
-- Later migrations add the audit trail, key store and PHI tables.
SELECT 1;
