-- How a submitted manifest and its files are reached, as its request said (JSON: the
-- fileRequestHeaders to send, the oauthMetadataUrls to get a token from). Header values are
-- credentials: the database file is owner-only, and nothing logs them.
ALTER TABLE submission_manifests ADD COLUMN access TEXT;
