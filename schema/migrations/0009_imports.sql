-- CSV contact imports (nudgel.api.jobs.imports).
--
-- An import is a job (kind 'import') with its options here; its rows are
-- COPYed into import_rows as the file's cells, then applied in batches.
-- A batch deletes the rows it applied and keeps the rejected ones with
-- their reason: after the job, import_rows is the rejection report, and
-- during it, what is left to do (a batch is one transaction, so a crash
-- loses no row and applies none twice).

CREATE TABLE imports (
    job_id       text PRIMARY KEY REFERENCES jobs ON DELETE CASCADE,
    workspace_id bigint NOT NULL REFERENCES workspaces ON DELETE CASCADE,
    filename     text,
    -- The file's header, and what each column maps to ('email', 'fields.plan',
    -- or NULL for an ignored column), in column order.
    header       text[] NOT NULL,
    targets      text[] NOT NULL,
    tags         text[] NOT NULL DEFAULT '{}',
    -- Every imported contact is subscribed to this list (as an upsert's
    -- "subscriptions": {list: "subscribed"} does: double opt-in included).
    list         text,
    source       text NOT NULL
);

CREATE TABLE import_rows (
    job_id     text NOT NULL REFERENCES imports ON DELETE CASCADE,
    -- The row's number in the file: the header is row 1 (CSV records, so a
    -- quoted cell spanning lines is still one row).
    row_number integer NOT NULL,
    cells      text[] NOT NULL,
    -- Set when the row is rejected: the column at fault (if one) and why.
    column_name text,
    reason     text,
    PRIMARY KEY (job_id, row_number)
);
