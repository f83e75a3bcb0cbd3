-- Issue 12: an index for every list and lookup the API issues, each ending in the list's order
-- (its keyset) so that a page, first or deep, reads only its own rows. Chosen from the query
-- plans on both databases (tests/api/query_plans.rs keeps them that way).

-- GET /events, newest first: unfiltered or by period, by customer (or customer_external_id),
-- by subject, by one event type, and the unbilled ones.
CREATE INDEX IF NOT EXISTS usage_events_by_occurred ON usage_events (mode, occurred_at, id);
CREATE INDEX IF NOT EXISTS usage_events_by_customer_occurred ON usage_events (mode, customer_id, occurred_at, id);
CREATE INDEX IF NOT EXISTS usage_events_by_subject ON usage_events (mode, subject, occurred_at, id);
CREATE INDEX IF NOT EXISTS usage_events_by_type ON usage_events (mode, event_type, occurred_at, id);
CREATE INDEX IF NOT EXISTS usage_events_unbilled_by_occurred ON usage_events (mode, occurred_at, id) WHERE unbilled_reason IS NOT NULL;
CREATE INDEX IF NOT EXISTS usage_events_unbilled_by_reason ON usage_events (mode, unbilled_reason, occurred_at, id) WHERE unbilled_reason IS NOT NULL;
DROP INDEX IF EXISTS usage_events_unbilled;

-- GET /customers?email= (exact, any case) and ?name= (a prefix, any case).
CREATE INDEX IF NOT EXISTS customers_by_email ON customers (mode, lower(email), created_at, id);
CREATE INDEX IF NOT EXISTS customers_by_name ON customers (mode, lower(name));

-- The other lists, in their order.
CREATE INDEX IF NOT EXISTS wallet_accounts_by_customer ON wallet_accounts (customer_id, created_at, name, asset);
CREATE INDEX IF NOT EXISTS grants_by_account_created ON grants (customer_id, account_name, asset, created_at, id);
CREATE INDEX IF NOT EXISTS products_by_created ON products (mode, created_at, id);
CREATE INDEX IF NOT EXISTS vendors_by_created ON vendors (mode, created_at, id);
CREATE INDEX IF NOT EXISTS subscription_products_by_product_subscription ON subscription_products (product_id, subscription_id);
CREATE INDEX IF NOT EXISTS top_ups_by_customer_created ON top_ups (customer_id, created_at, id);
CREATE INDEX IF NOT EXISTS webhook_destinations_live ON webhook_destinations (mode, created_at, id) WHERE deleted_at IS NULL;
CREATE INDEX IF NOT EXISTS webhook_deliveries_by_status ON webhook_deliveries (mode, status, sequence);

-- Webhook retention: the oldest events first.
CREATE INDEX IF NOT EXISTS webhook_events_by_created ON webhook_events (created_at)
