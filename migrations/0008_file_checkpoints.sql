-- A durable point of a file being downloaded (JSON: the bytes stored whole, the line and resource
-- counts there, the provider's validator and the destination's state), so a process taking the
-- job over continues the file instead of starting it again. Cleared when the file ends.
ALTER TABLE job_files ADD COLUMN checkpoint TEXT;
