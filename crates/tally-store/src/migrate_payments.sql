CREATE TABLE top_ups (
    id TEXT PRIMARY KEY,
    mode TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    amount TEXT NOT NULL,
    currency TEXT NOT NULL,
    account_name TEXT NOT NULL,
    asset TEXT NOT NULL,
    asset_amount TEXT NOT NULL,
    rate_kind TEXT NOT NULL,
    rate_value TEXT NOT NULL,
    rate_overridden BIGINT NOT NULL,
    credit_expires_at BIGINT,
    return_url TEXT NOT NULL,
    failure_url TEXT NOT NULL,
    description TEXT,
    metadata TEXT NOT NULL,
    status TEXT NOT NULL,
    provider TEXT NOT NULL,
    provider_reference TEXT,
    redirect_url TEXT,
    checkout_token TEXT NOT NULL,
    failure_reason TEXT,
    origin TEXT NOT NULL,
    subscription_id TEXT,
    save_payment_method BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    completed_at BIGINT,
    updated_at BIGINT NOT NULL
);
CREATE INDEX top_ups_by_customer ON top_ups (customer_id, created_at);
CREATE INDEX top_ups_open ON top_ups (status, expires_at);
CREATE INDEX top_ups_by_reference ON top_ups (provider, provider_reference);

CREATE TABLE payment_methods (
    id TEXT PRIMARY KEY,
    mode TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    provider TEXT NOT NULL,
    provider_reference TEXT NOT NULL,
    provider_customer TEXT,
    brand TEXT,
    last4 TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX payment_methods_by_customer ON payment_methods (customer_id, created_at);

CREATE TABLE auto_top_ups (
    mode TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    account_name TEXT NOT NULL,
    asset TEXT NOT NULL,
    enabled BIGINT NOT NULL,
    threshold TEXT NOT NULL,
    amount TEXT NOT NULL,
    currency TEXT NOT NULL,
    payment_method_id TEXT,
    failures BIGINT NOT NULL,
    retry_at BIGINT,
    in_flight_top_up_id TEXT,
    last_error TEXT,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (customer_id, account_name, asset)
);

CREATE TABLE portal_links (
    token_hash TEXT PRIMARY KEY,
    mode TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    return_url TEXT NOT NULL,
    failure_url TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT,
    created_at BIGINT NOT NULL
);

CREATE TABLE portal_sessions (
    token_hash TEXT PRIMARY KEY,
    mode TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    csrf_token TEXT NOT NULL,
    return_url TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
