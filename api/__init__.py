"""The Nudgel service: the app, its settings, and one folder per capability.
Layers (import-linter): http -> capabilities -> db; see docs/architecture.md."""
