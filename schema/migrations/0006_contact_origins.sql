-- 0006_contact_origins: where each profile value came from.
--
-- `origins` maps a profile attribute ('email', 'phone', 'whatsapp_id',
-- 'external_id', 'name', 'push_tokens') or a custom field ('fields.<name>')
-- to the write that last changed it: {"source": "form", "at": "<RFC 3339 UTC>"}.
-- The service records an entry only when a value actually changes, and a
-- merge carries each entry along with the value that wins (contacts_store).
-- Kept on the row rather than in a side table: it is read and rewritten
-- together with the values it describes, under the same row lock.
ALTER TABLE contacts
    ADD COLUMN origins jsonb NOT NULL DEFAULT '{}',
    ADD CONSTRAINT contacts_origins_is_object CHECK (jsonb_typeof(origins) = 'object');
