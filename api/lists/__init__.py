"""Lists: subscription statuses and double opt-in, sandboxed templates rendered in bounded
worker processes, opaque confirm/unsubscribe links, the mailer (SMTP or the dev inbox)."""
