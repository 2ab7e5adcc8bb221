//! API tests: a spawned app and an in-process fake provider, over real HTTP on loopback.
mod auth;
mod binary;
mod dashboard;
mod destinations;
mod fake_provider;
mod helpers;
mod import;
mod jobs;
mod jwks_url;
mod listener;
mod load;
mod provider_bounds;
mod pull;
mod real_providers;
mod s3_server;
mod small_disk;
mod ui;
