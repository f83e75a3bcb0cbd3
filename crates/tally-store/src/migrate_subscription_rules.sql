CREATE TABLE idempotency_keys (
    mode TEXT NOT NULL,
    scope TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    customer_id TEXT,
    request_hash TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (mode, scope, idempotency_key)
);

ALTER TABLE subscriptions ADD COLUMN renewal_anchor_at BIGINT;

ALTER TABLE entitlement_periods ADD COLUMN anchor_at BIGINT;
