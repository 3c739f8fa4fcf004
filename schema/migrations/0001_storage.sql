-- 0001_storage: the storage schema that compiled rules read.
--
-- Schema-agnostic on purpose: no object is schema-qualified. The migration
-- runner sets search_path to the target schema, and `rulec eval --backend
-- postgres` applies this same file into a throwaway schema.
--
-- Text that rules compare (ids, email, phone, names, tags, lists, event names)
-- is COLLATE "C": the language orders text by code point, and "C" b-tree
-- indexes also serve `starts_with`-style prefix scans without text_pattern_ops.
--
-- Every foreign key is covered by an index whose leading column is the
-- referencing column, so ON DELETE CASCADE from a workspace or contact never
-- scans a whole table.

CREATE TABLE workspaces (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE contacts (
    pk           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workspace_id bigint NOT NULL REFERENCES workspaces ON DELETE CASCADE,
    id           text COLLATE "C" NOT NULL,
    email        text COLLATE "C",
    phone        text COLLATE "C",
    whatsapp_id  text COLLATE "C",
    external_id  text COLLATE "C",
    name         text COLLATE "C",
    push_tokens  jsonb NOT NULL DEFAULT '[]',
    -- Custom fields: numbers as JSON numbers, dates 'YYYY-MM-DD', timestamps
    -- RFC 3339 with offset, bools, text, json (read via the nudgel_try_* helpers).
    fields       jsonb NOT NULL DEFAULT '{}',
    stage        text COLLATE "C",
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    -- Also the index for the workspace_id foreign key.
    CONSTRAINT contacts_workspace_id_id_key UNIQUE (workspace_id, id),
    CONSTRAINT contacts_push_tokens_is_array CHECK (jsonb_typeof(push_tokens) = 'array'),
    CONSTRAINT contacts_fields_is_object CHECK (jsonb_typeof(fields) = 'object')
)
-- Contacts are updated in place often (fields, stage, updated_at); free space
-- per page lets those be HOT updates that leave the indexes alone.
WITH (fillfactor = 90);

-- Identities are unique per workspace when present.
CREATE UNIQUE INDEX contacts_workspace_email_key
    ON contacts (workspace_id, email) WHERE email IS NOT NULL;
CREATE UNIQUE INDEX contacts_workspace_phone_key
    ON contacts (workspace_id, phone) WHERE phone IS NOT NULL;
CREATE UNIQUE INDEX contacts_workspace_whatsapp_id_key
    ON contacts (workspace_id, whatsapp_id) WHERE whatsapp_id IS NOT NULL;
CREATE UNIQUE INDEX contacts_workspace_external_id_key
    ON contacts (workspace_id, external_id) WHERE external_id IS NOT NULL;

-- Tag definitions (colours); a contact's tags are free text in contact_tags.
CREATE TABLE tags (
    workspace_id bigint NOT NULL REFERENCES workspaces ON DELETE CASCADE,
    name         text COLLATE "C" NOT NULL,
    color        text,
    PRIMARY KEY (workspace_id, name)
);

CREATE TABLE contact_tags (
    contact_pk bigint NOT NULL REFERENCES contacts (pk) ON DELETE CASCADE,
    tag        text COLLATE "C" NOT NULL,
    PRIMARY KEY (contact_pk, tag)
);
-- `tag "x"` as a segment driver: all contacts carrying a tag, index-only.
CREATE INDEX contact_tags_tag_contact_pk_idx ON contact_tags (tag, contact_pk);

CREATE TABLE subscriptions (
    contact_pk bigint NOT NULL REFERENCES contacts (pk) ON DELETE CASCADE,
    list       text COLLATE "C" NOT NULL,
    status     text NOT NULL
        CHECK (status IN ('pending', 'subscribed', 'unsubscribed', 'bounced')),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (contact_pk, list)
);
-- `subscribed "list"` as a segment driver, index-only.
CREATE INDEX subscriptions_list_status_contact_pk_idx
    ON subscriptions (list, status, contact_pk);

CREATE TABLE events (
    pk          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    contact_pk  bigint NOT NULL REFERENCES contacts (pk) ON DELETE CASCADE,
    name        text COLLATE "C" NOT NULL,
    at          timestamptz NOT NULL,
    props       jsonb NOT NULL DEFAULT '{}',
    source      text,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT events_props_is_object CHECK (jsonb_typeof(props) = 'object')
);
-- `event "x" within D`, count/sum/first/last of one event name per contact.
CREATE INDEX events_contact_pk_name_at_idx ON events (contact_pk, name, at);
-- `event *` per contact; also the index for the contact_pk foreign key.
CREATE INDEX events_contact_pk_at_idx ON events (contact_pk, at);

CREATE TABLE field_definitions (
    workspace_id bigint NOT NULL REFERENCES workspaces ON DELETE CASCADE,
    name         text COLLATE "C" NOT NULL,
    type         text NOT NULL
        CHECK (type IN ('text', 'number', 'bool', 'date', 'timestamp', 'email', 'url', 'json')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, name)
);

-- ---- helpers for compiled rules --------------------------------------------
--
-- A compiled query must never raise a data error, so custom-field text is
-- converted by these instead of casts. They validate the exact forms the
-- language accepts and build the value from integers, without an EXCEPTION
-- block: entering such a block starts a subtransaction, which PostgreSQL
-- before 17 refuses in parallel mode ("cannot start subtransactions during a
-- parallel operation"), so a PARALLEL SAFE function with one would fail under a
-- parallel plan; it is also slow per row. Built this way they depend on no
-- setting (TimeZone, DateStyle), so they are IMMUTABLE: usable in expression
-- indexes on custom fields and folded at plan time for constants.

-- 'YYYY-MM-DD' only (a timestamp is not a date); NULL for anything else,
-- including impossible dates ('2026-02-30') and year 0000.
CREATE FUNCTION nudgel_try_date(v text) RETURNS date
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    m text[] := regexp_match(v, '^([0-9]{4})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$');
    y int;
    mo int;
    d int;
BEGIN
    IF m IS NULL THEN
        RETURN NULL;
    END IF;
    y := m[1]::int;
    mo := m[2]::int;
    d := m[3]::int;
    -- Last day of the month, from make_date on the 1st (always valid for y >= 1).
    IF y < 1 OR d > extract(day FROM make_date(y, mo, 1) + interval '1 month - 1 day') THEN
        RETURN NULL;
    END IF;
    RETURN make_date(y, mo, d);
END
$$;

-- RFC 3339 with an explicit offset: 'T'/'Z' in either case, optional
-- fractional seconds (truncated to microseconds, as Python's datetime does),
-- no leap second, offsets up to +-23:59. NULL for anything else, including a
-- timestamp without offset ('2026-06-01T00:00:00').
CREATE FUNCTION nudgel_try_timestamptz(v text) RETURNS timestamptz
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    m text[] := regexp_match(v,
        '^([0-9]{4})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt]'
        '([01][0-9]|2[0-3]):([0-5][0-9]):([0-5][0-9])(?:\.([0-9]+))?'
        '(?:[Zz]|([+-])([01][0-9]|2[0-3]):([0-5][0-9]))$');
    y int;
    mo int;
    d int;
    local_time timestamp;
    offset_minutes int;
BEGIN
    IF m IS NULL THEN
        RETURN NULL;
    END IF;
    y := m[1]::int;
    mo := m[2]::int;
    d := m[3]::int;
    IF y < 1 OR d > extract(day FROM make_date(y, mo, 1) + interval '1 month - 1 day') THEN
        RETURN NULL;
    END IF;
    local_time := make_date(y, mo, d)
        + make_interval(hours => m[4]::int, mins => m[5]::int, secs => m[6]::int)
        -- First six fraction digits, right-padded: whole microseconds.
        + coalesce(rpad(left(m[7], 6), 6, '0')::int, 0) * interval '1 microsecond';
    offset_minutes := coalesce((m[8] || '1')::int * (m[9]::int * 60 + m[10]::int), 0);
    RETURN (local_time - offset_minutes * interval '1 minute') AT TIME ZONE 'UTC';
END
$$;

-- Case folding for contains/starts_with/ends_with: ASCII via lower() under
-- "C" (locale-independent), other characters via the compiler-supplied
-- translate() map. Plain SQL so the planner inlines it; the octet/char length
-- test skips translate() for pure-ASCII text.
CREATE FUNCTION nudgel_fold(x text, src text, dst text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN octet_length(x) = char_length(x) THEN lower(x COLLATE "C")
        ELSE translate(lower(x COLLATE "C"), src, dst)
    END
$$;
