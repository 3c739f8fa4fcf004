-- 0012_list_links_and_dev_inbox: unsubscribe links that name nobody, and
-- the dev inbox kept per workspace.
--
-- An unsubscribe link's token is a signed random nonce
-- (nudgel.api.lists.tokens); this row says which contact and list it
-- unsubscribes, so the link itself carries no personal data. One row per
-- email sent (and per landing page shown). A merge moves the rows to the
-- surviving contact; deleting the contact deletes them.
CREATE TABLE list_unsubscribe_links (
    nonce        text PRIMARY KEY,
    workspace_id bigint NOT NULL REFERENCES workspaces ON DELETE CASCADE,
    contact_pk   bigint NOT NULL REFERENCES contacts (pk) ON DELETE CASCADE,
    list         text COLLATE "C" NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX list_unsubscribe_links_workspace_id_idx ON list_unsubscribe_links (workspace_id);
CREATE INDEX list_unsubscribe_links_contact_pk_idx ON list_unsubscribe_links (contact_pk);

-- With no SMTP server configured, the emails the service would have sent,
-- per workspace, read with that workspace's key (GET /v1/dev/inbox). The
-- newest dev_inbox_max_messages of a workspace are kept; the text is cut to
-- dev_inbox_max_message_bytes.
CREATE TABLE dev_inbox_messages (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workspace_id bigint NOT NULL REFERENCES workspaces ON DELETE CASCADE,
    headers      jsonb NOT NULL,
    text         text NOT NULL,
    truncated    boolean NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dev_inbox_messages_workspace_id_idx ON dev_inbox_messages (workspace_id, id);
