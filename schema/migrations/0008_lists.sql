-- 0008_lists: subscription lists (double opt-in, confirmation email and
-- landing page templates), the confirmation links sent, and the service's
-- token signing key.
--
-- A contact's status on a list stays in `subscriptions` (0001), which the
-- compiled rules read as `subscribed "list"`; this migration adds what the
-- lists themselves are.

CREATE TABLE lists (
    workspace_id         bigint NOT NULL REFERENCES workspaces ON DELETE CASCADE,
    name                 text COLLATE "C" NOT NULL,
    title                text NOT NULL,
    double_opt_in        boolean NOT NULL DEFAULT false,
    -- Sandboxed Jinja2 sources (nudgel.api.lists.templates), checked when saved.
    confirmation_subject text NOT NULL,
    confirmation_body    text NOT NULL,
    landing_page         text NOT NULL,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, name)
);

-- One row per confirmation email sent. The link carries a signed token
-- naming `nonce`; the row makes the token single-use (`used_at`) and says
-- which subscription it confirms. Deleting the contact deletes its links.
CREATE TABLE list_confirmations (
    nonce        text PRIMARY KEY,
    workspace_id bigint NOT NULL REFERENCES workspaces ON DELETE CASCADE,
    contact_pk   bigint NOT NULL REFERENCES contacts (pk) ON DELETE CASCADE,
    list         text COLLATE "C" NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    used_at      timestamptz
);
CREATE INDEX list_confirmations_workspace_id_idx ON list_confirmations (workspace_id);
CREATE INDEX list_confirmations_contact_pk_idx ON list_confirmations (contact_pk);

-- Secrets the service generates for itself once (the token signing key when
-- NUDGEL_SECRET_KEY is not set), so every instance on this database signs and
-- verifies with the same key, across restarts.
CREATE TABLE service_secrets (
    name       text PRIMARY KEY,
    value      text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
