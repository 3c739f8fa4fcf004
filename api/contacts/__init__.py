"""Contacts: identifiers and their normalisation, the store (upsert, merge, locks),
custom fields, views as the API shows them, and ``where=`` queries."""
