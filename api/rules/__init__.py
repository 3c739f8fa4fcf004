"""Rules: deploy a rule set, the deployed-rules store, real-time evaluation, backfills, the
scheduler and test clock that move time; segments and each contact's rule history as kept."""
