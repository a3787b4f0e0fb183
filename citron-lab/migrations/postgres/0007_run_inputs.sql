-- Issue 15 §7: replay by revision. A run records its input key (SHA-256 of its salt, revision,
-- rendered job, DUT tags and declared artifacts' digests, hex) when it finishes, what went into
-- it as JSON ({"declared": {name: sha256}, "served": {name: sha256}, "tags": [...]}), and its
-- job's text and `file:` root, so that `citron results find` renders the job again for a DUT.
ALTER TABLE runs ADD COLUMN input_key TEXT;
ALTER TABLE runs ADD COLUMN inputs TEXT;
ALTER TABLE runs ADD COLUMN job_yaml TEXT;
ALTER TABLE runs ADD COLUMN job_dir TEXT;
CREATE INDEX runs_by_input_key ON runs (job, input_key);
