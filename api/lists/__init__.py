"""Lists: subscription statuses and double opt-in, the lists' sandboxed templates,
signed confirm/unsubscribe tokens, and the mailer (SMTP or the dev inbox)."""
