-- Fields just work (issue #12): an unknown custom field in a write is created
-- with its type inferred from the value, unless the workspace is strict.
ALTER TABLE workspaces ADD COLUMN fields_strict boolean NOT NULL DEFAULT false;
