//! The API tests, one binary: the service (each test on a fresh migrated database on the
//! Postgres named by TEST_DATABASE_URL), the Moment simulator, and the two together.

mod architecture;
mod browser;
mod charges;
mod consent;
mod containers;
mod events;
mod faults;
mod flow;
mod mandates;
mod money;
mod openapi;
mod ops;
mod server;
mod sim_api;
mod subscriptions;
mod support;
mod surface;
mod terms;
mod webhooks;
