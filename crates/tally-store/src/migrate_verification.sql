-- Issue 9, verification. `ledger_grants` is the ledger's own record of each grant it issued:
-- written once, in the transaction that makes the grant, and never changed, so that
-- `tally ledger verify` can check a grant's amount and purpose against something other than
-- the grant row itself. Grants made before this migration are recorded as they stand now.
CREATE TABLE ledger_grants (
    grant_id TEXT PRIMARY KEY,
    mode TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    account_name TEXT NOT NULL,
    asset TEXT NOT NULL,
    transaction_id TEXT,
    purpose TEXT NOT NULL,
    amount TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
INSERT INTO ledger_grants (grant_id, mode, customer_id, account_name, asset, transaction_id, purpose, amount, created_at)
SELECT id, mode, customer_id, account_name, asset, transaction_id, purpose, amount, created_at FROM grants;

-- Finds the ledger entry of a transaction (or top-up), and an expiry's entry by its grant,
-- so that verification reads each transaction with its entry instead of holding either in
-- memory.
CREATE INDEX ledger_entries_by_transaction ON ledger_entries (customer_id, transaction_id, grant_id);

-- Issue 9, portal totals: the fees that did not come from usage events (charges and
-- subscription fees), by customer and time, so that the portal adds up a month's spend
-- without reading every usage fee's transaction (those are read from event_fees, by when the
-- event occurred). Partial, so that usage events, the bulk of writes, never touch it.
CREATE INDEX transactions_other_fees ON transactions (customer_id, created_at)
    WHERE kind = 'fee' AND substr(id, 1, 12) <> 'tally_event_'
