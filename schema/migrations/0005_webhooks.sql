-- 0005_webhooks: webhook endpoints, one delivery per (endpoint, outbox event),
-- and a log of every attempt. The worker is nudgel.api.webhooks.delivery.

-- An endpoint a workspace's events are POSTed to. `secret` (`whsec_...`) is
-- kept in clear: every delivery is signed with it (HMAC), so unlike an API key
-- it cannot be stored as a hash. The API shows it once, on creation.
CREATE TABLE webhooks (
    pk           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workspace_id bigint NOT NULL REFERENCES workspaces ON DELETE CASCADE,
    -- Public id (`wh_...`), time-ordered: lists are keyset-paginated on it.
    id           text COLLATE "C" NOT NULL UNIQUE,
    url          text NOT NULL CHECK (url ~ '^https?://'),
    -- Event types, or '*' for all of them.
    events       text[] NOT NULL CHECK (cardinality(events) > 0),
    secret       text NOT NULL CHECK (secret LIKE 'whsec\_%'),
    created_at   timestamptz NOT NULL DEFAULT now()
);
-- Lists and the fan-out's join on the outbox row's workspace (also the
-- workspace_id foreign key's index).
CREATE INDEX webhooks_workspace_id_idx ON webhooks (workspace_id, id);

-- One row per (webhook, outbox event) the webhook subscribes to, written when
-- the worker fans an outbox row out (in outbox id order, one fan-out at a
-- time). Deleting the webhook deletes its deliveries: nothing more is sent.
CREATE TABLE webhook_deliveries (
    pk              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    webhook_pk      bigint NOT NULL REFERENCES webhooks ON DELETE CASCADE,
    outbox_id       bigint NOT NULL REFERENCES outbox ON DELETE CASCADE,
    -- Copied from the outbox row: a contact's deliveries to one webhook go
    -- out in outbox id order (see the ordering index below).
    contact_pk      bigint,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'delivered', 'failed')),
    -- Attempts started, counted when claimed (so one that crashed its worker counts).
    attempts        int NOT NULL DEFAULT 0,
    -- When a pending delivery may next be claimed: the backoff after a
    -- failure, or the end of the lease while a worker holds it.
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    -- Set by the claim that holds the lease; a worker only settles the
    -- delivery while its own token is still there.
    lease_token     uuid,
    last_status     int,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    -- Also the index for the outbox foreign key.
    CONSTRAINT webhook_deliveries_outbox_id_webhook_pk_key UNIQUE (outbox_id, webhook_pk)
);
-- The listing (newest first) and the webhook foreign key.
CREATE INDEX webhook_deliveries_webhook_pk_idx ON webhook_deliveries (webhook_pk, pk);
-- The claim: pending deliveries by due time.
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';
-- The ordering check: is an earlier delivery of the same contact to the same
-- webhook still pending?
CREATE INDEX webhook_deliveries_contact_order_idx
    ON webhook_deliveries (webhook_pk, contact_pk, outbox_id)
    WHERE status = 'pending' AND contact_pk IS NOT NULL;

-- Every attempt: written when the worker claims the delivery, completed with
-- the answer. One left without `finished_at` was interrupted (its worker
-- stopped or crashed mid-request).
CREATE TABLE webhook_attempts (
    pk              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_pk     bigint NOT NULL REFERENCES webhook_deliveries ON DELETE CASCADE,
    started_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    response_status int,
    error           text
);
CREATE INDEX webhook_attempts_delivery_pk_idx ON webhook_attempts (delivery_pk, pk);
