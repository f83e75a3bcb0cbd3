-- Issue 9: an event's content hash (to tell a replay from another event reusing its id), and
-- each subscription's history of active intervals per product version (to price an event by
-- the subscriptions in force when it occurred).
--
-- Events stored before this migration keep an empty hash: theirs is computed from their
-- stored fields when an id is sent again (see ops::events::content_hash).
ALTER TABLE usage_events ADD COLUMN content_hash TEXT NOT NULL DEFAULT '';

-- One row per (subscription, product) and stretch of time it was active on one version:
-- active from `active_from` (included) until `active_to` (excluded), or still (NULL).
CREATE TABLE subscription_history (
    sequence {id},
    mode TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    subscription_id TEXT NOT NULL,
    product_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    active_from BIGINT NOT NULL,
    active_to BIGINT
);
CREATE INDEX subscription_history_by_customer ON subscription_history (customer_id, active_to);
CREATE INDEX subscription_history_by_subscription ON subscription_history (subscription_id, active_to);

-- Subscriptions active before this migration are taken as active on their current versions
-- since they first started: earlier pauses and version changes were not recorded.
INSERT INTO subscription_history (mode, customer_id, subscription_id, product_id, version, active_from, active_to)
SELECT s.mode, s.customer_id, s.id, p.product_id, p.version, COALESCE(s.started_at, s.starts_at), NULL
FROM subscriptions s JOIN subscription_products p ON p.subscription_id = s.id
WHERE s.status = 'active';
