//! moment-mandates: recurring payments through Moment.

pub mod app;
pub mod auth;
pub mod config;
pub mod db;
pub mod domain;
pub mod error;
pub mod moment;
pub mod routes;
pub mod store;
pub mod telemetry;
pub mod worker;
pub mod workflow;
