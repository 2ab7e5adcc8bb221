-- What became of a job's notice (NOTIFY_URL): delivered, or why not. Kept as an outcome line.
ALTER TABLE jobs ADD COLUMN notice TEXT;
