//! The service's API tests, one binary: each test gets a fresh migrated database
//! (`#[sqlx::test]`) on the Postgres named by DATABASE_URL.

mod charges;
mod helpers;
mod mandates;
mod server;
mod testdb;
mod webhooks;
