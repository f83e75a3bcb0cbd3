-- Issue 12: the portal's activity filtered to one kind of movement (top-ups, plan fees,
-- included credits, gifts, expiries). transactions_by_time holds a customer's transactions
-- that are not usage fees, but PostgreSQL cannot know how few: for a customer with a million
-- usage fees it estimated a million rows of that index for the customer, found a filter on
-- `kind` passing one of them, and read the whole table instead (338 ms per page at 3 million
-- transactions). With `kind` in the index the filter is an index condition and its estimate
-- is the kind's: one index range, newest first, however many fees the customer has. Usage
-- fees are not in it (the same condition as transactions_by_time), so the hot path writes
-- no entry of it.
CREATE INDEX IF NOT EXISTS transactions_by_kind_time ON transactions (customer_id, kind, created_at, sequence)
    WHERE substr(id, 1, 12) <> 'tally_event_';
