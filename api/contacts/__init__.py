"""Contacts: identifiers and their normalisation, the store (upsert, merge, locks), field
and tag definitions, custom field values, views as the API shows them, ``where=`` queries."""
