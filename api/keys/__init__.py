"""Keys: API keys, made, hashed, stored and revoked; ``sk_live_`` and ``sk_test_``
modes. Authentication itself is an HTTP dependency (``nudgel.api.http.auth``)."""
