//! The test harness, shared by every suite: the router under test with Moment faked by
//! wiremock (`app`), fresh databases (`db`), the simulator (`sim`), the whole dev stack
//! (`stack`), services on sockets and as processes (`process`), a TCP proxy that can slow
//! or cut connections (`proxy`), and a webhook endpoint that holds its answers (`held`).

pub mod app;
pub mod db;
pub mod held;
pub mod process;
pub mod proxy;
pub mod sim;
pub mod stack;
