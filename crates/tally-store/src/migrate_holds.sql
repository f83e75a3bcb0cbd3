-- Issue 15, holds (pre-authorisation). A hold reserves an amount of one wallet account for a
-- capture to come: `amount` was moved from the account's available balance to its
-- `pending_out` (ledger entries with transaction_id tally_hold_{id}), `captured` of it went on
-- as fees, `released` of it came back (by a release or at expiry). While `status` is 'held' it
-- still holds amount - captured - released, and the account's pending_out is the sum of that
-- over its open holds. `id` is the client's transaction_id, unique per customer.
CREATE TABLE holds (
    mode TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    id TEXT NOT NULL,
    account_name TEXT NOT NULL,
    asset TEXT NOT NULL,
    amount TEXT NOT NULL,
    captured TEXT NOT NULL,
    released TEXT NOT NULL,
    status TEXT NOT NULL,
    allow_overdraft BIGINT NOT NULL,
    description TEXT,
    metadata TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    closed_at BIGINT,
    PRIMARY KEY (customer_id, id)
);
CREATE INDEX holds_by_created ON holds (customer_id, created_at, id);
-- The open holds: by account, for ledger verification, and by expiry, for the worker.
CREATE INDEX holds_open_by_account ON holds (customer_id, account_name, asset) WHERE status = 'held';
CREATE INDEX holds_open_by_expiry ON holds (expires_at) WHERE status = 'held'
