-- Where a provider's URLs may live (real providers put files and tokens outside the FHIR base):
-- extra origins that may receive our token, an optional strict allow-list of file origins, and
-- an optional pinned token endpoint (for providers without discovery). JSON arrays of origins.
ALTER TABLE providers ADD COLUMN token_origins TEXT NOT NULL DEFAULT '[]';
ALTER TABLE providers ADD COLUMN file_origins TEXT;
ALTER TABLE providers ADD COLUMN token_endpoint TEXT;

-- Error and fatal issues a provider reported in its `error[]` files, and resources per type for
-- files whose manifest entry named no type (`organizeOutputBy`; a JSON object).
ALTER TABLE job_files ADD COLUMN provider_errors INTEGER NOT NULL DEFAULT 0;
ALTER TABLE job_files ADD COLUMN type_counts TEXT;
