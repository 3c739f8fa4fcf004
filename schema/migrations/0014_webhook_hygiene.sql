-- 0013_webhook_hygiene: what earlier versions stored and should not have.
--
-- 1. Delivery attempts recorded the raw connect error ("ConnectError: [Errno
--    111] ...", "HTTP 503"), which told whoever holds a key about the network
--    behind the service. The worker (nudgel.api.webhooks.delivery) now records
--    a short class; earlier rows get theirs, as far as the text tells it.
-- 2. The stored response of POST /v1/webhooks (idempotency_keys, for replays)
--    held the webhook's signing secret. A replay now reads it from webhooks
--    (nudgel.api.webhooks.endpoints); the stored copies lose it.

-- A helper for this migration only (dropped below).
CREATE FUNCTION webhook_error_class(raw text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN raw ~ '^[a-z0-9_]+$' THEN raw
        WHEN raw ~ '^HTTP [1-5][0-9][0-9]$' THEN 'http_' || substr(raw, 6, 1) || 'xx'
        WHEN raw LIKE 'interrupted%' THEN 'interrupted'
        WHEN raw ILIKE '%timeout%' THEN 'timeout'
        WHEN raw ILIKE '%name or service not known%'
          OR raw ILIKE '%name resolution%'
          OR raw ILIKE '%nodename nor servname%' THEN 'dns_error'
        WHEN raw LIKE '%SSL%' OR raw ILIKE '%certificate%' THEN 'tls_error'
        WHEN raw ILIKE '%connection refused%' THEN 'connection_refused'
        WHEN raw LIKE '%ProtocolError%' THEN 'protocol_error'
        ELSE 'connection_error'
    END
$$;

UPDATE webhook_attempts SET error = webhook_error_class(error)
WHERE error IS NOT NULL AND error !~ '^[a-z0-9_]+$';

UPDATE webhook_deliveries SET last_error = webhook_error_class(last_error)
WHERE last_error IS NOT NULL AND last_error !~ '^[a-z0-9_]+$';

DROP FUNCTION webhook_error_class(text);

UPDATE idempotency_keys SET response_body = response_body - 'secret'
WHERE response_body ->> 'object' = 'webhook' AND response_body ? 'secret';
