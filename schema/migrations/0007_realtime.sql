-- 0007_realtime: deployed rule sets and what they say about each contact,
-- kept up to date as data changes and as time passes.

-- Every deployed version of a workspace's rules; the newest is in force.
CREATE TABLE rule_sets (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workspace_id bigint NOT NULL REFERENCES workspaces ON DELETE CASCADE,
    version      int NOT NULL CHECK (version > 0),
    files        jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (workspace_id, version)
);

-- A test-mode workspace's clock: rules evaluate at this instant instead of
-- the wall clock (POST /v1/test_clock/advance). NULL: the wall clock.
ALTER TABLE workspaces ADD COLUMN test_clock timestamptz;

-- Current memberships. No foreign key to contacts: leaving a segment when a
-- contact is deleted or merged away is an event the service writes itself,
-- before the contact row goes (nudgel.api.rules.realtime.forget).
CREATE TABLE segment_members (
    workspace_id bigint NOT NULL REFERENCES workspaces ON DELETE CASCADE,
    segment      text NOT NULL,
    contact_pk   bigint NOT NULL,
    since        timestamptz NOT NULL,
    PRIMARY KEY (workspace_id, segment, contact_pk)
);
CREATE INDEX segment_members_contact_idx ON segment_members (contact_pk);

CREATE TABLE contact_scores (
    workspace_id bigint NOT NULL REFERENCES workspaces ON DELETE CASCADE,
    contact_pk   bigint NOT NULL,
    score        text NOT NULL,
    value        numeric NOT NULL,
    updated_at   timestamptz NOT NULL,
    PRIMARY KEY (contact_pk, score)
);
CREATE INDEX contact_scores_workspace_idx ON contact_scores (workspace_id, score);

-- Every change of a score, a membership or the stage: old, new, when (the
-- evaluation instant), why (what changed: the mutation, time, a deploy).
CREATE TABLE rule_history (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workspace_id bigint NOT NULL REFERENCES workspaces ON DELETE CASCADE,
    contact_pk   bigint NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('segment', 'score', 'stage')),
    name         text NOT NULL,
    old_value    text,
    new_value    text,
    at           timestamptz NOT NULL,
    reason       text NOT NULL
);
CREATE INDEX rule_history_contact_idx ON rule_history (contact_pk, kind, name, at);

-- The next instant at which time alone may change one of the contact's
-- results (nudgel.runtime.next_change); the scheduler re-evaluates it then.
-- evaluated_at: when the rules were last evaluated for the contact (wall
-- clock), so a backfill knows which contacts a mutation re-evaluated after its
-- snapshot was taken.
ALTER TABLE contacts
    ADD COLUMN next_evaluation_at timestamptz,
    ADD COLUMN evaluated_at timestamptz;
CREATE INDEX contacts_next_evaluation_idx ON contacts (workspace_id, next_evaluation_at)
    WHERE next_evaluation_at IS NOT NULL;

-- Long-running work (backfills) with progress.
CREATE TABLE jobs (
    id           text PRIMARY KEY,
    workspace_id bigint NOT NULL REFERENCES workspaces ON DELETE CASCADE,
    kind         text NOT NULL,
    status       text NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed')),
    total        bigint NOT NULL DEFAULT 0,
    done         bigint NOT NULL DEFAULT 0,
    result       jsonb,
    error        text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
);
CREATE INDEX jobs_workspace_idx ON jobs (workspace_id, created_at);
