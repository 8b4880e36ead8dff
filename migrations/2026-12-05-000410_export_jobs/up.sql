-- Bulk Data `$export` jobs (issue 17): durable, resumable, one running job per requester.
--
-- A row holds ids, codes and counts only: the request's parameters as codes (level,
-- kind, types, _since, k), what the decision point permitted per type (view and search
-- scope), the actor to record events as, and the progress the runner has committed. No
-- PHI: the output lives in files under `export.dir` (de-identified, or sealed lines).
CREATE TABLE export_jobs (
    id uuid PRIMARY KEY,
    requester_id uuid NOT NULL REFERENCES users (id),
    status text NOT NULL CHECK (status IN ('queued', 'running', 'completed', 'failed')),
    level text NOT NULL CHECK (level IN ('system', 'group', 'patient')),
    kind text NOT NULL CHECK (kind IN ('identified', 'de-identified')),
    group_id uuid,
    types text[] NOT NULL,
    since timestamptz,
    k integer NOT NULL CHECK (k >= 1),
    suppress boolean NOT NULL,
    -- [{type, view, scope, scope_id}] as the decision point permitted at kick-off.
    parts jsonb NOT NULL,
    -- {part, after, counts[], bytes[]}: committed after each batch's lines are on disk.
    progress jsonb NOT NULL,
    -- The actor the runner records events as (the requester at kick-off).
    actor_client_id text CHECK (actor_client_id IS NULL OR length(actor_client_id) <= 128),
    actor_roles text[] NOT NULL,
    auth_method text NOT NULL CHECK (auth_method ~ '^[a-z][a-z0-9-]{1,62}$'),
    client_app text CHECK (client_app IS NULL OR length(client_app) <= 128),
    -- The k-anonymity report of a de-identified export (counts and coded classes).
    report jsonb,
    error_code text CHECK (error_code IS NULL OR error_code ~ '^[a-z][a-z0-9-]{1,62}$'),
    -- How many times a runner took the job over after another stopped (restarts).
    resumes integer NOT NULL DEFAULT 0,
    lease_owner uuid,
    lease_until timestamptz,
    transaction_time timestamptz NOT NULL,
    created_at timestamptz NOT NULL,
    completed_at timestamptz,
    expires_at timestamptz NOT NULL
);
-- One queued or running export per requester (a second kick-off is a 429).
CREATE UNIQUE INDEX export_jobs_one_running ON export_jobs (requester_id)
    WHERE status IN ('queued', 'running');
CREATE INDEX export_jobs_pending ON export_jobs (created_at) WHERE status IN ('queued', 'running');
CREATE INDEX export_jobs_expiry ON export_jobs (expires_at);

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'custodian_app') THEN
        GRANT SELECT, INSERT, UPDATE, DELETE ON export_jobs TO custodian_app;
    END IF;
END
$$;
