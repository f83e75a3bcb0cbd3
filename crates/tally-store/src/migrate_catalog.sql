CREATE TABLE products (
    id TEXT PRIMARY KEY,
    mode TEXT NOT NULL,
    code TEXT NOT NULL,
    name TEXT NOT NULL,
    default_version BIGINT,
    archived_at BIGINT,
    created_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX products_by_code ON products (mode, code);

CREATE TABLE product_versions (
    product_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    mode TEXT NOT NULL,
    status TEXT NOT NULL,
    definition TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (product_id, version)
);

CREATE TABLE subscriptions (
    id TEXT PRIMARY KEY,
    mode TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    status TEXT NOT NULL,
    starts_at BIGINT NOT NULL,
    started_at BIGINT,
    renews_at BIGINT,
    next_action_at BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX subscriptions_by_customer ON subscriptions (customer_id, created_at);
CREATE INDEX subscriptions_due ON subscriptions (next_action_at);

CREATE TABLE subscription_products (
    subscription_id TEXT NOT NULL,
    product_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    customer_id TEXT NOT NULL,
    mode TEXT NOT NULL,
    PRIMARY KEY (subscription_id, product_id)
);
CREATE INDEX subscription_products_by_product ON subscription_products (product_id, customer_id);

CREATE TABLE entitlement_periods (
    subscription_id TEXT NOT NULL,
    product_id TEXT NOT NULL,
    entitlement_index BIGINT NOT NULL,
    customer_id TEXT NOT NULL,
    period_start BIGINT NOT NULL,
    next_refresh_at BIGINT,
    PRIMARY KEY (subscription_id, product_id, entitlement_index)
);

CREATE TABLE usage_events (
    mode TEXT NOT NULL,
    id TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    occurred_at BIGINT NOT NULL,
    subject TEXT,
    description TEXT,
    data TEXT NOT NULL,
    costs TEXT NOT NULL,
    has_fees BIGINT NOT NULL,
    total_fees TEXT,
    fee_currency TEXT,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (mode, id)
);
CREATE INDEX usage_events_by_customer ON usage_events (customer_id, occurred_at);
CREATE INDEX usage_events_by_created ON usage_events (mode, created_at, id);

CREATE TABLE event_fees (
    id TEXT PRIMARY KEY,
    mode TEXT NOT NULL,
    event_id TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    line BIGINT NOT NULL,
    product_id TEXT NOT NULL,
    product_code TEXT NOT NULL,
    product_version BIGINT NOT NULL,
    price_id TEXT NOT NULL,
    price_name TEXT NOT NULL,
    asset TEXT NOT NULL,
    account_name TEXT NOT NULL,
    detail TEXT NOT NULL,
    amount TEXT NOT NULL,
    occurred_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX event_fees_by_event ON event_fees (mode, event_id, line);
CREATE INDEX event_fees_by_customer ON event_fees (customer_id, occurred_at);

CREATE TABLE usage_counters (
    customer_id TEXT NOT NULL,
    price_id TEXT NOT NULL,
    period_start BIGINT NOT NULL,
    units TEXT NOT NULL,
    volume TEXT NOT NULL,
    PRIMARY KEY (customer_id, price_id, period_start)
);

CREATE TABLE vendors (
    id TEXT PRIMARY KEY,
    mode TEXT NOT NULL,
    name TEXT NOT NULL,
    external_id TEXT,
    created_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX vendors_by_external_id ON vendors (mode, external_id);

CREATE TABLE event_costs (
    mode TEXT NOT NULL,
    event_id TEXT NOT NULL,
    line BIGINT NOT NULL,
    customer_id TEXT NOT NULL,
    cost_id TEXT NOT NULL,
    vendor_id TEXT NOT NULL,
    category TEXT,
    description TEXT,
    amount TEXT NOT NULL,
    currency TEXT NOT NULL,
    occurred_at BIGINT NOT NULL,
    PRIMARY KEY (mode, event_id, line)
);
CREATE INDEX event_costs_by_vendor ON event_costs (vendor_id, occurred_at);
CREATE INDEX event_costs_by_customer ON event_costs (customer_id, occurred_at);
