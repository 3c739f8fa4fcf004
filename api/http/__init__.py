"""HTTP only: auth, problem handlers, pagination, idempotency and writes, and one router
per resource (``routers``) whose handlers parse, call one capability, and respond."""
