"""Webhooks: the transactional outbox every mutation writes to, and the worker
that delivers its events as signed HTTP POSTs, in order per contact."""
