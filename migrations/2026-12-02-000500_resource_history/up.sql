-- Every version a FHIR write produced (issue 16: _history and vread). The resource's FHIR
-- JSON is sealed whole (AES-GCM, AAD bound to this table, column and row id, like every
-- sealed column; the opened body must name the row's resource id and version), so the
-- history holds no plaintext PHI; only the ids, version, patient and time are in clear.
-- A deletion is a version without a body. Rows are only appended by the API (key rotation
-- re-seals them like any other sealed table).
CREATE TABLE resource_history (
    id uuid PRIMARY KEY,
    resource_type text NOT NULL,
    resource_id uuid NOT NULL,
    version int4 NOT NULL,
    patient_id uuid NOT NULL,
    deleted boolean NOT NULL DEFAULT false,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    key_version int4 NOT NULL,
    body_sealed bytea,
    UNIQUE (resource_type, resource_id, version)
);
