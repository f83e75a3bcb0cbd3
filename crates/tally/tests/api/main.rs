//! Tally's integration suite: one test binary, every test against the real server over HTTP,
//! on SQLite and on PostgreSQL.

mod harness;

mod assets;
mod auth;
mod customers;
mod errors;
mod multi_server;
mod openapi;
mod portal;
mod sdk;
mod stripe;
mod topups;
mod usage;
mod wallet;
mod webhooks;
