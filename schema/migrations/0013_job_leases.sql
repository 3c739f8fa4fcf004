-- 0011_job_leases: jobs outlive the process that runs them, and a deploy
-- knows its backfill (nudgel.api.jobs.runner, nudgel.api.jobs.resume).
--
-- A queued or running job belongs to the process named by lease_owner until
-- lease_expires_at; the process extends the lease with a heartbeat while it
-- works. Once the lease has lapsed (the process died), any `nudgel serve` or
-- `nudgel worker` claims the job and runs it on from its committed progress.

ALTER TABLE jobs
    -- What running the job again needs beyond its kind and workspace
    -- (a backfill: the rule set version, its silent nodes, how far it got).
    ADD COLUMN params           jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN lease_owner      text,
    ADD COLUMN lease_expires_at timestamptz,
    ADD COLUMN heartbeat_at     timestamptz,
    -- How many times a process started it: more than one means it was
    -- resumed after a crash, or retried.
    ADD COLUMN attempts         integer NOT NULL DEFAULT 0,
    ADD COLUMN started_at       timestamptz;

-- The lapsed-lease scan looks only at unfinished jobs.
CREATE INDEX jobs_lease_idx ON jobs (lease_expires_at) WHERE status IN ('queued', 'running');

-- Jobs left unfinished by processes from before leases cannot be told from
-- running ones: they are marked failed, to be retried (POST /v1/jobs/{id}/retry).
UPDATE jobs
   SET status = 'failed', finished_at = now(),
       error = 'interrupted by an upgrade of the service; retry it (POST /v1/jobs/{id}/retry)'
 WHERE status IN ('queued', 'running');

-- The backfill of each version: the newest one when it was re-run
-- ("backfill": "force"). Its status is the deploy's.
ALTER TABLE rule_sets ADD COLUMN job_id text REFERENCES jobs ON DELETE SET NULL;
