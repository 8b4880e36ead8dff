-- Claims are sealed like the other PHI tables: provider, total, item codes and item
-- amounts become AES-256-GCM envelopes (src/crypto) bound to table, column and row id.
-- `status`, `currency` and item `seq` are coded values and stay in clear for search;
-- `patient_id` stays an internal id. Claim items get their own `key_version` so key
-- rotation re-seals them like any other sealed table.
--
-- SQL cannot seal, so rows written before this migration wait in `claims_unsealed` /
-- `claim_items_unsealed` (same ids) until the next start-up seals them with the active
-- data key and deletes them there (`db::claims::seal_unsealed`, run by
-- `crypto::load_keyring` before anything is served). Both tables stay empty afterwards.
CREATE TABLE claims_unsealed AS SELECT * FROM claims;
CREATE TABLE claim_items_unsealed AS SELECT * FROM claim_items;
ALTER TABLE claims_unsealed ADD PRIMARY KEY (id);
ALTER TABLE claim_items_unsealed ADD PRIMARY KEY (id);
DELETE FROM claim_items;
DELETE FROM claims;

ALTER TABLE claims
    DROP COLUMN provider,
    DROP COLUMN total_cents,
    ADD COLUMN provider_sealed bytea NOT NULL,
    ADD COLUMN total_sealed bytea NOT NULL;

ALTER TABLE claim_items
    DROP COLUMN code,
    DROP COLUMN amount_cents,
    ADD COLUMN key_version integer NOT NULL,
    ADD COLUMN code_sealed bytea NOT NULL,
    ADD COLUMN amount_sealed bytea NOT NULL;
CREATE INDEX claim_items_key_version ON claim_items (key_version);
CREATE INDEX claim_items_claim_id ON claim_items (claim_id);

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'custodian_app') THEN
        -- A claim update replaces its items.
        GRANT DELETE ON claim_items TO custodian_app;
        GRANT SELECT, DELETE ON claims_unsealed, claim_items_unsealed TO custodian_app;
    END IF;
END
$$;
