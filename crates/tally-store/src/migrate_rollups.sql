-- Issue 12, totals at any size: per-hour totals of fees and costs, kept by the write path in
-- the transaction of the fees themselves (`repo::rollups`), so that stats and the portal add
-- up hours instead of reading every fee. An hour is counted since the Unix epoch (an
-- instant in microseconds divided by 3600000000), so that a day on any calendar whose offset
-- from UTC is whole hours is whole hours, and the part of a period at either edge that is
-- read from the fees themselves is less than an hour. Totals are exact: an
-- amount is stored as whole units (`amount_units`, rounded down) plus a fraction in two
-- parts, units of 10^-12 (`amount_pico`) and of 10^-24 (`amount_yocto`), each from 0 to
-- 10^12 - 1, all BIGINT, so SQL adds them as integers and carries (a fee has at most 24
-- decimal places, a volume of 12 times a rate of 12). Rows that exist before this migration are filled in by Rust
-- (`repo::rollups::backfill`), because SQL cannot add amounts stored as text exactly.

-- A customer's fees per hour, asset, product and price. `source`
-- is `usage` for usage-event fees (`event_fees`, dated by when the event occurred), `plan` for
-- subscription fees and `other` for every other fee transaction (charges), those two dated by
-- when they were made, by what they took from the wallet, with the product and price their
-- details name (else empty).
CREATE TABLE fee_rollups (
    mode TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    hour BIGINT NOT NULL,
    source TEXT NOT NULL,
    asset TEXT NOT NULL,
    product_id TEXT NOT NULL,
    price_id TEXT NOT NULL,
    amount_units BIGINT NOT NULL,
    amount_pico BIGINT NOT NULL,
    amount_yocto BIGINT NOT NULL,
    fee_count BIGINT NOT NULL,
    PRIMARY KEY (customer_id, mode, hour, source, asset, product_id, price_id)
);

-- Usage-event fees per mode, hour and asset over all customers, for the platform's stats. Each
-- total is spread over a few rows (`shard`, chosen from the customer id), so that writers of
-- different customers on PostgreSQL seldom wait for each other's row.
CREATE TABLE fee_rollups_by_mode (
    mode TEXT NOT NULL,
    hour BIGINT NOT NULL,
    asset TEXT NOT NULL,
    shard BIGINT NOT NULL,
    amount_units BIGINT NOT NULL,
    amount_pico BIGINT NOT NULL,
    amount_yocto BIGINT NOT NULL,
    fee_count BIGINT NOT NULL,
    PRIMARY KEY (mode, hour, asset, shard)
);

-- A customer's vendor costs per hour and currency.
CREATE TABLE cost_rollups (
    mode TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    hour BIGINT NOT NULL,
    currency TEXT NOT NULL,
    amount_units BIGINT NOT NULL,
    amount_pico BIGINT NOT NULL,
    amount_yocto BIGINT NOT NULL,
    cost_count BIGINT NOT NULL,
    PRIMARY KEY (customer_id, mode, hour, currency)
);

-- Vendor costs per vendor, hour, category (empty for none) and currency over all customers,
-- sharded like `fee_rollups_by_mode`.
CREATE TABLE cost_rollups_by_vendor (
    mode TEXT NOT NULL,
    vendor_id TEXT NOT NULL,
    hour BIGINT NOT NULL,
    category TEXT NOT NULL,
    currency TEXT NOT NULL,
    shard BIGINT NOT NULL,
    amount_units BIGINT NOT NULL,
    amount_pico BIGINT NOT NULL,
    amount_yocto BIGINT NOT NULL,
    cost_count BIGINT NOT NULL,
    PRIMARY KEY (vendor_id, hour, category, currency, shard)
);
CREATE INDEX cost_rollups_by_vendor_by_hour ON cost_rollups_by_vendor (mode, hour);

-- The part of an hour at a period's edge is read from the fees and costs themselves: for the
-- platform's stats, by mode and time.
CREATE INDEX event_fees_by_time ON event_fees (mode, occurred_at);
CREATE INDEX event_costs_by_time ON event_costs (mode, occurred_at)
