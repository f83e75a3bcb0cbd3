//! One module per resource: request and response types (kept apart from domain types) and
//! their handlers.

pub mod accounts;
pub mod assets;
pub mod customers;
pub mod events;
pub mod holds;
pub mod portal;
pub mod products;
pub mod reports;
pub mod stripe_webhook;
pub mod subscriptions;
pub mod topups;
pub mod vendors;
pub mod wallet;
pub mod webhooks;
