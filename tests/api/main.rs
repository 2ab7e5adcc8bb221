//! API tests: a spawned app and an in-process fake provider, over real HTTP on loopback.
mod audit;
mod auth;
mod binary;
mod cli;
mod dashboard;
mod destinations;
mod fake_provider;
mod helpers;
mod import;
mod jobs;
mod jwks_url;
mod listener;
mod load;
mod metrics;
#[path = "../support/pg_cluster.rs"]
mod pg_cluster;
mod plan;
mod postgres;
mod provider_bounds;
mod pull;
mod real_providers;
mod replicas;
mod s3_server;
mod small_disk;
mod storage_faults;
mod store_conformance;
mod ui;
