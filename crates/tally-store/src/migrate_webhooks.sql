CREATE TABLE webhook_destinations (
    id TEXT PRIMARY KEY,
    mode TEXT NOT NULL,
    url TEXT NOT NULL,
    topics TEXT NOT NULL,
    connect BIGINT NOT NULL,
    enabled BIGINT NOT NULL,
    secret TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    deleted_at BIGINT
);
CREATE INDEX webhook_destinations_by_mode ON webhook_destinations (mode, deleted_at, created_at);

CREATE TABLE webhook_events (
    id TEXT PRIMARY KEY,
    mode TEXT NOT NULL,
    topic TEXT NOT NULL,
    customer_id TEXT,
    data TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE webhook_deliveries (
    sequence {id},
    mode TEXT NOT NULL,
    event_id TEXT NOT NULL,
    destination_id TEXT NOT NULL,
    event_created_at BIGINT NOT NULL,
    status TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    next_attempt_at BIGINT,
    successful_at BIGINT,
    failed_at BIGINT,
    last_status_code BIGINT,
    last_error TEXT
);
CREATE UNIQUE INDEX webhook_deliveries_by_event ON webhook_deliveries (event_id, destination_id);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at);
CREATE INDEX webhook_deliveries_by_mode ON webhook_deliveries (mode, sequence);
CREATE INDEX webhook_deliveries_by_destination ON webhook_deliveries (destination_id, sequence);

CREATE TABLE webhook_attempts (
    delivery_sequence BIGINT NOT NULL,
    attempt BIGINT NOT NULL,
    mode TEXT NOT NULL,
    attempted_at BIGINT NOT NULL,
    status_code BIGINT,
    error TEXT,
    duration_ms BIGINT NOT NULL,
    PRIMARY KEY (delivery_sequence, attempt)
);
