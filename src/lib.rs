//! bulk-import: a FHIR Bulk Data import consumer ("ping and pull").
pub mod address_guard;
pub mod app;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod config;
pub mod destination;
pub mod domain;
pub mod error_text;
pub mod fhir;
pub mod http_client;
pub mod http_server;
pub mod imports;
pub mod instance_id;
pub mod job_views;
pub mod jobs;
pub mod key_pairs;
pub mod metrics;
pub mod owner_only;
pub mod registrations;
pub mod routes;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod time_util;

pub use app::App;
