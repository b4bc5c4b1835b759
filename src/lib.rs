//! moment-mandates: recurring payments through Moment.

pub mod app;
pub mod auth;
pub mod config;
pub mod db;
pub mod dev;
pub mod domain;
pub mod error;
pub mod html;
pub mod metrics;
pub mod moment;
pub mod openapi;
pub mod routes;
pub mod sim;
pub mod store;
pub mod telemetry;
pub mod worker;
pub mod workflow;
