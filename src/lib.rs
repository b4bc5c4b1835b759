//! moment-mandates: recurring payments through Moment.

pub mod api;
pub mod app;
pub mod auth;
pub mod cli;
pub mod clock;
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
pub mod server;
pub mod sim;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod worker;
pub mod workflow;
