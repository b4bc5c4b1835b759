//! The API tests, one binary: the service (each test on a fresh migrated database on the
//! Postgres named by TEST_DATABASE_URL), the Moment simulator, and the two together.

mod browser;
mod charges;
mod containers;
mod faults;
mod flow;
mod helpers;
mod mandates;
mod openapi;
mod ops;
mod proxy;
mod server;
mod sim_api;
mod testdb;
mod webhooks;
