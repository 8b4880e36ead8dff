-- PHI storage. Every `*_sealed` column holds an AES-256-GCM envelope produced by
-- src/crypto (format byte, key version, nonce, ciphertext+tag) bound to its table, column
-- and row id; every `*_index` column holds a keyed HMAC-SHA256 blind index over a
-- normalised value. `key_version` is the data-key version that sealed all sealed columns
-- of the row (rows are sealed and re-sealed as a whole). No identifier or name is stored
-- in plaintext.

CREATE TABLE facilities (
    id         uuid PRIMARY KEY,
    name       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE patients (
    id                uuid PRIMARY KEY,
    version           integer NOT NULL DEFAULT 1,
    key_version       integer NOT NULL,
    facility_id       uuid NOT NULL REFERENCES facilities (id),
    mrn_sealed        bytea NOT NULL,
    mrn_index         bytea NOT NULL UNIQUE,
    ssn_sealed        bytea,
    ssn_index         bytea,
    family_sealed     bytea NOT NULL,
    family_index      bytea NOT NULL,
    given_sealed      bytea NOT NULL,
    given_index       bytea NOT NULL,
    birth_date_sealed bytea NOT NULL,
    birth_date_index  bytea NOT NULL,
    gender            text NOT NULL,
    telecom_sealed    bytea,
    address_sealed    bytea,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    deleted_at        timestamptz,
    CHECK ((ssn_sealed IS NULL) = (ssn_index IS NULL))
);
CREATE INDEX patients_facility_id ON patients (facility_id);
CREATE INDEX patients_ssn_index ON patients (ssn_index) WHERE ssn_index IS NOT NULL;
CREATE INDEX patients_family_index ON patients (family_index);
CREATE INDEX patients_given_index ON patients (given_index);
CREATE INDEX patients_birth_date_index ON patients (birth_date_index);
CREATE INDEX patients_key_version ON patients (key_version);

CREATE TABLE observations (
    id                  uuid PRIMARY KEY,
    version             integer NOT NULL DEFAULT 1,
    key_version         integer NOT NULL,
    patient_id          uuid NOT NULL REFERENCES patients (id),
    status              text NOT NULL,
    code                text NOT NULL,
    code_display_sealed bytea,
    value_sealed        bytea NOT NULL,
    effective_at        timestamptz NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    deleted_at          timestamptz
);
CREATE INDEX observations_patient_id ON observations (patient_id);
CREATE INDEX observations_key_version ON observations (key_version);

CREATE TABLE document_references (
    id          uuid PRIMARY KEY,
    version     integer NOT NULL DEFAULT 1,
    key_version integer NOT NULL,
    patient_id  uuid NOT NULL REFERENCES patients (id),
    author_id   uuid,
    doc_type    text,
    date        timestamptz,
    text_sealed bytea NOT NULL,
    status      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);
CREATE INDEX document_references_patient_id ON document_references (patient_id);
CREATE INDEX document_references_author_id ON document_references (author_id);
CREATE INDEX document_references_key_version ON document_references (key_version);

CREATE TABLE claims (
    id          uuid PRIMARY KEY,
    version     integer NOT NULL DEFAULT 1,
    key_version integer NOT NULL,
    patient_id  uuid NOT NULL REFERENCES patients (id),
    provider    text NOT NULL,
    status      text NOT NULL,
    total_cents bigint NOT NULL,
    currency    text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);
CREATE INDEX claims_patient_id ON claims (patient_id);
CREATE INDEX claims_key_version ON claims (key_version);

CREATE TABLE claim_items (
    id           uuid PRIMARY KEY,
    claim_id     uuid NOT NULL REFERENCES claims (id) ON DELETE CASCADE,
    seq          integer NOT NULL,
    code         text NOT NULL,
    amount_cents bigint NOT NULL,
    UNIQUE (claim_id, seq)
);
