//! Tally's integration suite: one test binary, every test against the real server over HTTP,
//! on SQLite and on PostgreSQL.

mod harness;

mod assets;
mod auth;
mod commands;
mod crash;
mod credyt_examples;
mod customers;
mod errors;
mod holds;
mod ingest_rounds;
mod jobs;
mod multi_server;
mod openapi;
mod operations;
mod platforms;
mod portal;
mod query_plans;
mod rebill;
mod revenue;
mod rollups;
mod sdk;
mod server_process;
mod stripe;
mod subscriptions;
mod top_up_input;
mod topups;
mod unbilled;
mod usage;
mod usage_in_time;
mod verify;
mod wallet;
mod webhooks;
