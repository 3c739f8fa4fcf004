"""Rules: deploy a rule set, the deployed-rules store, real-time evaluation,
backfills of a new deploy, and the scheduler that re-evaluates as time passes."""
