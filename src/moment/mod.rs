//! Everything that speaks Moment: its HTTP API, its JSON, and its webhook signatures.

pub mod client;
pub mod signature;
pub mod wire;

pub use client::{Attempt, MomentClient, MomentError, RetryPolicy};
