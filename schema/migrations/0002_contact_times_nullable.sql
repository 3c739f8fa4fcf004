-- 0002_contact_times_nullable: a contact's created_at / updated_at may be unknown.
--
-- Rules read `created_at` and `updated_at` like any attribute: absent means
-- missing (spec §6), so `created_at > now - 7d` is false and `created_at is
-- not set` true. With NOT NULL DEFAULT now(), a contact imported without them
-- (`rulec eval --backend postgres`, a bulk import) would instead get the load
-- time, and results would depend on the wall clock. The defaults stay: the
-- service still stamps contacts it creates; only an explicit NULL is allowed.
ALTER TABLE contacts
    ALTER COLUMN created_at DROP NOT NULL,
    ALTER COLUMN updated_at DROP NOT NULL;
