-- 0003_service: what the HTTP service adds around the storage schema:
-- API keys, idempotency records, the event outbox, and timestamps on tags.

-- Keys are random 256-bit tokens; only their SHA-256 is stored (see
-- nudgel.api.keys.store for why a fast hash is enough). `prefix` is the start of the
-- key, kept in clear so people can tell keys apart in listings.
CREATE TABLE api_keys (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workspace_id bigint NOT NULL REFERENCES workspaces ON DELETE CASCADE,
    mode         text NOT NULL CHECK (mode IN ('live', 'test')),
    prefix       text NOT NULL,
    hash         bytea NOT NULL UNIQUE CHECK (octet_length(hash) = 32),
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz
);
CREATE INDEX api_keys_workspace_id_idx ON api_keys (workspace_id);

-- One row per (workspace, Idempotency-Key) of a POST that completed. Written in
-- the same transaction as the mutation it guards (nudgel.api.http.idempotency), so a
-- rolled-back mutation leaves no record and its retry runs afresh.
CREATE TABLE idempotency_keys (
    workspace_id        bigint NOT NULL REFERENCES workspaces ON DELETE CASCADE,
    key                 text NOT NULL CHECK (char_length(key) BETWEEN 1 AND 255),
    -- SHA-256 of method, path and canonical body: a reuse with other
    -- parameters is refused rather than replayed.
    request_fingerprint bytea NOT NULL,
    state               text NOT NULL CHECK (state IN ('in_flight', 'done')),
    response_status     int,
    response_body       jsonb,
    created_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, key),
    CONSTRAINT idempotency_keys_done_has_response
        CHECK (state = 'in_flight' OR (response_status IS NOT NULL AND response_body IS NOT NULL))
);
-- For the job that forgets keys after their retention period.
CREATE INDEX idempotency_keys_created_at_idx ON idempotency_keys (created_at);

-- Transactional outbox: every mutation appends its event here in its own
-- transaction, so an event exists if and only if its change committed.
-- The delivery worker (nudgel.api.webhooks.delivery, tables in 0005_webhooks) fans each
-- row out to the matching webhooks in id order, one fan-out at a time, and
-- claims the resulting deliveries with FOR UPDATE SKIP LOCKED; attempts,
-- backoff and per-contact ordering live in webhook_deliveries, keyed by
-- (outbox id, webhook).
CREATE TABLE outbox (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workspace_id bigint NOT NULL REFERENCES workspaces ON DELETE CASCADE,
    -- Public event id (`evt_...`), stable across retries: the webhook-id.
    event_id     text NOT NULL UNIQUE,
    event_type   text NOT NULL,
    -- The contact the event is about, if any: deliveries for one contact go
    -- out in id order. No foreign key on purpose: `contact.deleted` must
    -- outlive its contact.
    contact_pk   bigint,
    payload      jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    -- Set once the row has been fanned out to delivery rows.
    dispatched_at timestamptz
);
-- What the dispatcher scans: undispatched rows, oldest first.
CREATE INDEX outbox_pending_idx ON outbox (id) WHERE dispatched_at IS NULL;
CREATE INDEX outbox_workspace_id_idx ON outbox (workspace_id, id);
CREATE INDEX outbox_contact_pk_idx ON outbox (contact_pk, id) WHERE contact_pk IS NOT NULL;

ALTER TABLE tags
    ADD COLUMN created_at timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now();
