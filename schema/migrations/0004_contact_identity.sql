-- 0004_contact_identity: identifiers that are stored but never match.
--
-- Blocked identifier values (settings.blocked_identifiers: shared test
-- inboxes, placeholder numbers) stay in their column, so the profile shows
-- them and rules read them like any other, but they must never identify a
-- contact: two contacts may both carry `test@example.com`, and an upsert with
-- it never finds either. `unmatched_identifiers` lists the kinds of the
-- contact's identifiers that were blocked when stored; the unique indexes
-- (and the service's lookups, with the same predicate) skip those, so
-- uniqueness holds exactly for the identifiers that match.

ALTER TABLE contacts
    ADD COLUMN unmatched_identifiers text[] NOT NULL DEFAULT '{}',
    ADD CONSTRAINT contacts_unmatched_identifiers_kinds
        CHECK (unmatched_identifiers <@ ARRAY['email', 'phone', 'whatsapp_id', 'external_id']);

DROP INDEX contacts_workspace_email_key;
DROP INDEX contacts_workspace_phone_key;
DROP INDEX contacts_workspace_whatsapp_id_key;
DROP INDEX contacts_workspace_external_id_key;

CREATE UNIQUE INDEX contacts_workspace_email_key ON contacts (workspace_id, email)
    WHERE email IS NOT NULL AND NOT ('email' = ANY (unmatched_identifiers));
CREATE UNIQUE INDEX contacts_workspace_phone_key ON contacts (workspace_id, phone)
    WHERE phone IS NOT NULL AND NOT ('phone' = ANY (unmatched_identifiers));
CREATE UNIQUE INDEX contacts_workspace_whatsapp_id_key ON contacts (workspace_id, whatsapp_id)
    WHERE whatsapp_id IS NOT NULL AND NOT ('whatsapp_id' = ANY (unmatched_identifiers));
CREATE UNIQUE INDEX contacts_workspace_external_id_key ON contacts (workspace_id, external_id)
    WHERE external_id IS NOT NULL AND NOT ('external_id' = ANY (unmatched_identifiers));
