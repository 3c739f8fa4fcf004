-- Test and live are separate worlds (issue #11), as in Stripe: a workspace name
-- has one row per mode, and every tenant table already hangs off that row by
-- workspace_id, so contacts, events, fields, tags, lists, rules, webhooks, jobs
-- and the test clock of sk_test_ keys are never those of sk_live_ keys.
ALTER TABLE workspaces ADD COLUMN mode text NOT NULL DEFAULT 'live'
    CHECK (mode IN ('live', 'test'));
ALTER TABLE workspaces DROP CONSTRAINT workspaces_name_key;
ALTER TABLE workspaces ADD CONSTRAINT workspaces_name_mode_key UNIQUE (name, mode);

-- A workspace used only with test keys so far holds test data.
UPDATE workspaces w SET mode = 'test'
 WHERE EXISTS (SELECT 1 FROM api_keys k WHERE k.workspace_id = w.id AND k.mode = 'test')
   AND NOT EXISTS (SELECT 1 FROM api_keys k WHERE k.workspace_id = w.id AND k.mode = 'live');
-- Used with both: the data stays live, the test keys move to a new, empty test
-- workspace of the same name (the shared data was live data stamped by a test clock).
INSERT INTO workspaces (name, mode)
SELECT DISTINCT w.name, 'test' FROM workspaces w JOIN api_keys k ON k.workspace_id = w.id
 WHERE w.mode = 'live' AND k.mode = 'test'
ON CONFLICT DO NOTHING;
UPDATE api_keys k SET workspace_id = t.id
  FROM workspaces w, workspaces t
 WHERE k.workspace_id = w.id AND k.mode = 'test' AND w.mode = 'live'
   AND t.name = w.name AND t.mode = 'test';
UPDATE workspaces SET test_clock = NULL WHERE mode = 'live';
ALTER TABLE workspaces ADD CONSTRAINT workspaces_test_clock_in_test_mode
    CHECK (mode = 'test' OR test_clock IS NULL);

-- Keys managed like Stripe's: a label, an optional expiry (rotation: a new key,
-- and the old one valid until it expires), when it was last used (updated at
-- most once a minute), and restricted keys: NULL scopes is a full key; else
-- 'read' (GET), 'write' (every change) and 'ingest' (contacts and events in).
ALTER TABLE api_keys
    ADD COLUMN name text CHECK (char_length(name) <= 200),
    ADD COLUMN expires_at timestamptz,
    ADD COLUMN last_used_at timestamptz,
    ADD COLUMN scopes text[] CHECK (
        scopes <@ ARRAY['read', 'write', 'ingest']::text[] AND cardinality(scopes) > 0
    );

-- Rate limits per key, shared by every server process: GCRA's "theoretical
-- arrival time" per key, one UPDATE per request. Unlogged: after a crash the
-- buckets start full, which is harmless; no WAL for every request.
CREATE UNLOGGED TABLE rate_limits (
    key_id bigint PRIMARY KEY,
    tat    timestamptz NOT NULL
);
