-- Sealed values cannot be opened in SQL: going back is possible only without claims.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM claims) THEN
        RAISE EXCEPTION 'claims hold sealed values; reverting this migration would lose them';
    END IF;
END
$$;
DROP INDEX claim_items_claim_id;
DROP INDEX claim_items_key_version;
ALTER TABLE claim_items
    DROP COLUMN amount_sealed,
    DROP COLUMN code_sealed,
    DROP COLUMN key_version,
    ADD COLUMN code text NOT NULL,
    ADD COLUMN amount_cents bigint NOT NULL;
ALTER TABLE claims
    DROP COLUMN total_sealed,
    DROP COLUMN provider_sealed,
    ADD COLUMN provider text NOT NULL,
    ADD COLUMN total_cents bigint NOT NULL;
INSERT INTO claims (id, version, key_version, patient_id, provider, status, total_cents, currency, created_at, updated_at, deleted_at)
    SELECT id, version, key_version, patient_id, provider, status, total_cents, currency, created_at, updated_at, deleted_at FROM claims_unsealed;
INSERT INTO claim_items (id, claim_id, seq, code, amount_cents)
    SELECT id, claim_id, seq, code, amount_cents FROM claim_items_unsealed;
DROP TABLE claim_items_unsealed;
DROP TABLE claims_unsealed;
