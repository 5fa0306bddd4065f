-- The management schema. Every statement is idempotent; reconciler.store.migrating runs the whole
-- file in one transaction under an advisory lock, so two processes starting at once are safe.
--
-- cpi_projects and cpi_jobs may already exist (created by the original REST API): they are created
-- minimal here and every column reconcile needs is added with ADD COLUMN IF NOT EXISTS.

CREATE TABLE IF NOT EXISTS cpi_projects (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name VARCHAR(255) UNIQUE NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW()
);
ALTER TABLE cpi_projects ADD COLUMN IF NOT EXISTS spec JSONB;
ALTER TABLE cpi_projects ADD COLUMN IF NOT EXISTS owner TEXT;
ALTER TABLE cpi_projects ADD COLUMN IF NOT EXISTS source_file TEXT;
ALTER TABLE cpi_projects ADD COLUMN IF NOT EXISTS source_line INTEGER;
ALTER TABLE cpi_projects ADD COLUMN IF NOT EXISTS spec_hash TEXT;

CREATE TABLE IF NOT EXISTS cpi_jobs (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW()
);
ALTER TABLE cpi_jobs ADD COLUMN IF NOT EXISTS project_id UUID
    REFERENCES cpi_projects(id) ON DELETE SET NULL;
ALTER TABLE cpi_jobs ADD COLUMN IF NOT EXISTS schedule_name VARCHAR(255);
ALTER TABLE cpi_jobs ADD COLUMN IF NOT EXISTS project_name VARCHAR(255);
ALTER TABLE cpi_jobs ADD COLUMN IF NOT EXISTS trigger TEXT NOT NULL DEFAULT 'manual';
ALTER TABLE cpi_jobs ADD COLUMN IF NOT EXISTS status TEXT NOT NULL DEFAULT 'running';
ALTER TABLE cpi_jobs ADD COLUMN IF NOT EXISTS scheduled_for TIMESTAMP WITH TIME ZONE;
ALTER TABLE cpi_jobs ADD COLUMN IF NOT EXISTS started_at TIMESTAMP WITH TIME ZONE;
ALTER TABLE cpi_jobs ADD COLUMN IF NOT EXISTS finished_at TIMESTAMP WITH TIME ZONE;
ALTER TABLE cpi_jobs ADD COLUMN IF NOT EXISTS heartbeat_at TIMESTAMP WITH TIME ZONE;
ALTER TABLE cpi_jobs ADD COLUMN IF NOT EXISTS worker TEXT;
ALTER TABLE cpi_jobs ADD COLUMN IF NOT EXISTS rows_imported BIGINT NOT NULL DEFAULT 0;
ALTER TABLE cpi_jobs ADD COLUMN IF NOT EXISTS bytes_read BIGINT NOT NULL DEFAULT 0;
ALTER TABLE cpi_jobs ADD COLUMN IF NOT EXISTS files JSONB NOT NULL DEFAULT '[]'::jsonb;
ALTER TABLE cpi_jobs ADD COLUMN IF NOT EXISTS error TEXT;
ALTER TABLE cpi_jobs ADD COLUMN IF NOT EXISTS callback JSONB;
-- Files a run skipped unread as already imported: counted here, not listed in files.
ALTER TABLE cpi_jobs ADD COLUMN IF NOT EXISTS skipped_files INTEGER NOT NULL DEFAULT 0;
-- A run retried after a failure (its schedule's retries): which try this is (1 is the run
-- itself), and the job whose failure it retries.
ALTER TABLE cpi_jobs ADD COLUMN IF NOT EXISTS attempt INTEGER NOT NULL DEFAULT 1;
ALTER TABLE cpi_jobs ADD COLUMN IF NOT EXISTS retry_of UUID
    REFERENCES cpi_jobs(id) ON DELETE SET NULL;
-- When a retry waiting for its backoff may start (reconciler.store.claiming claims it then).
ALTER TABLE cpi_jobs ADD COLUMN IF NOT EXISTS retry_at TIMESTAMP WITH TIME ZONE;

-- The seed's DDL, column for column and constraint for constraint: other programs read this table.
CREATE TABLE IF NOT EXISTS cpi_schedules (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name VARCHAR(255) UNIQUE NOT NULL,
    project_id UUID REFERENCES cpi_projects(id) ON DELETE CASCADE,

    -- Schedule configuration
    schedule_type VARCHAR(20) NOT NULL CHECK (schedule_type IN ('cron', 'interval')),
    cron_expression VARCHAR(100),
    interval_seconds INTEGER CHECK (interval_seconds >= 3600),
    timezone VARCHAR(50) DEFAULT 'UTC',

    -- Execution settings
    enabled BOOLEAN DEFAULT TRUE,
    callback_url TEXT,
    sftp_override JSONB,
    local_files JSONB,

    -- Tracking
    last_run_at TIMESTAMP WITH TIME ZONE,
    next_run_at TIMESTAMP WITH TIME ZONE,
    last_job_id UUID REFERENCES cpi_jobs(id) ON DELETE SET NULL,
    total_runs INTEGER DEFAULT 0,
    successful_runs INTEGER DEFAULT 0,
    failed_runs INTEGER DEFAULT 0,

    created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW()
);
ALTER TABLE cpi_schedules ADD COLUMN IF NOT EXISTS owner TEXT;
ALTER TABLE cpi_schedules ADD COLUMN IF NOT EXISTS source_file TEXT;
ALTER TABLE cpi_schedules ADD COLUMN IF NOT EXISTS source_line INTEGER;
ALTER TABLE cpi_schedules ADD COLUMN IF NOT EXISTS spec_hash TEXT;
ALTER TABLE cpi_schedules ADD COLUMN IF NOT EXISTS misfire_grace_seconds INTEGER NOT NULL DEFAULT 300;
-- The instant interval cadence is counted from: kept across restarts and timing-neutral reconciles.
ALTER TABLE cpi_schedules ADD COLUMN IF NOT EXISTS interval_anchor TIMESTAMP WITH TIME ZONE;
-- How long a run may take (NULL: no limit), and how often and how soon a failed run is retried
-- (reconciler.model.durations.retry_delay: the backoff before the first retry, doubled after).
ALTER TABLE cpi_schedules ADD COLUMN IF NOT EXISTS timeout_seconds INTEGER;
ALTER TABLE cpi_schedules ADD COLUMN IF NOT EXISTS retries INTEGER NOT NULL DEFAULT 0;
ALTER TABLE cpi_schedules ADD COLUMN IF NOT EXISTS retry_backoff_seconds INTEGER NOT NULL DEFAULT 30;

ALTER TABLE cpi_jobs ADD COLUMN IF NOT EXISTS schedule_id UUID
    REFERENCES cpi_schedules(id) ON DELETE SET NULL;

-- One row per file loaded: what makes a file load exactly once, even after a crash mid-run. The
-- row is written in the same transaction as the file's data. A file's identity is its project, by
-- name, and a digest of its bytes (reconciler.store.ledger): rows are kept by name so that they
-- outlive the project's row (no cascade), and a row that is not `loaded` is a sighting: a path,
-- size and mtime whose bytes were loaded under another key. Rows written before the digest
-- existed (keyed by project_id, source, path, size, mtime) keep a NULL digest: fast path only.
CREATE TABLE IF NOT EXISTS cpi_imported_files (
    id BIGSERIAL PRIMARY KEY,
    project_id UUID,
    source TEXT NOT NULL,
    path TEXT NOT NULL,
    size BIGINT NOT NULL,
    mtime TIMESTAMP WITH TIME ZONE NOT NULL,
    job_id UUID REFERENCES cpi_jobs(id) ON DELETE SET NULL,
    rows_imported BIGINT NOT NULL DEFAULT 0,
    imported_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW()
);
ALTER TABLE cpi_imported_files ADD COLUMN IF NOT EXISTS project TEXT;
ALTER TABLE cpi_imported_files ADD COLUMN IF NOT EXISTS digest BYTEA;
ALTER TABLE cpi_imported_files ADD COLUMN IF NOT EXISTS loaded BOOLEAN NOT NULL DEFAULT true;
UPDATE cpi_imported_files f SET project = p.name
    FROM cpi_projects p WHERE f.project IS NULL AND p.id = f.project_id;
ALTER TABLE cpi_imported_files DROP CONSTRAINT IF EXISTS cpi_imported_files_project_id_fkey;
ALTER TABLE cpi_imported_files
    DROP CONSTRAINT IF EXISTS cpi_imported_files_project_id_source_path_size_mtime_key;
CREATE UNIQUE INDEX IF NOT EXISTS cpi_imported_files_content
    ON cpi_imported_files(project, digest) WHERE loaded;
CREATE UNIQUE INDEX IF NOT EXISTS cpi_imported_files_sighting
    ON cpi_imported_files(project, path) WHERE NOT loaded;
CREATE INDEX IF NOT EXISTS cpi_imported_files_path ON cpi_imported_files(project, path);

CREATE INDEX IF NOT EXISTS idx_cpi_schedules_project_id ON cpi_schedules(project_id);
CREATE INDEX IF NOT EXISTS idx_cpi_schedules_enabled ON cpi_schedules(enabled);
CREATE INDEX IF NOT EXISTS idx_cpi_schedules_owner ON cpi_schedules(owner);
-- The scheduler's claim query: the schedules due first.
CREATE INDEX IF NOT EXISTS idx_cpi_schedules_due ON cpi_schedules(next_run_at)
    WHERE next_run_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_cpi_projects_owner ON cpi_projects(owner);
CREATE INDEX IF NOT EXISTS idx_cpi_jobs_schedule_id ON cpi_jobs(schedule_id);
CREATE INDEX IF NOT EXISTS idx_cpi_jobs_schedule_name ON cpi_jobs(schedule_name, started_at DESC);
CREATE INDEX IF NOT EXISTS idx_cpi_jobs_status ON cpi_jobs(status) WHERE status = 'running';
-- At most one running job per schedule: the database, not the process, prevents overlap.
CREATE UNIQUE INDEX IF NOT EXISTS idx_cpi_jobs_one_running
    ON cpi_jobs(schedule_name) WHERE status = 'running';
-- Each scheduled occurrence, and each retry of it, is claimed exactly once across replicas.
DROP INDEX IF EXISTS idx_cpi_jobs_occurrence;  -- the same, before retries: one job per occurrence
CREATE UNIQUE INDEX IF NOT EXISTS idx_cpi_jobs_occurrence_attempt
    ON cpi_jobs(schedule_name, scheduled_for, attempt) WHERE trigger = 'schedule';
-- Pruning the job history (reconciler.store.pruning) reads each schedule's range by
-- idx_cpi_jobs_schedule_name; the ON DELETE SET NULL of each deleted job finds the rows that
-- reference it by these two, instead of scanning both tables once per job.
CREATE INDEX IF NOT EXISTS idx_cpi_schedules_last_job_id ON cpi_schedules(last_job_id);
CREATE INDEX IF NOT EXISTS idx_cpi_imported_files_job_id ON cpi_imported_files(job_id);
-- A deleted job's retries are found by this one (few jobs are retries: only they are indexed).
CREATE INDEX IF NOT EXISTS idx_cpi_jobs_retry_of ON cpi_jobs(retry_of) WHERE retry_of IS NOT NULL;

-- What `reconcile serve` keeps for `reconcile status`, one row per owner (several folders may
-- share the database, each with its own leader): which replica leads and applies, when the folder
-- was last read and applied, and the error that keeps the last change from applying.
CREATE TABLE IF NOT EXISTS cpi_daemon_state (
    owner TEXT PRIMARY KEY,
    leader TEXT,
    leader_since TIMESTAMP WITH TIME ZONE,
    leader_seen_at TIMESTAMP WITH TIME ZONE,
    loaded_at TIMESTAMP WITH TIME ZONE,
    applied_at TIMESTAMP WITH TIME ZONE,
    config_error TEXT,
    config_error_at TIMESTAMP WITH TIME ZONE
);
