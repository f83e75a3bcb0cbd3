-- Every usage event is written into each index of usage_events, and on a single event each
-- index is one more page in the round's write-ahead log. This one (customer_id, occurred_at)
-- serves nothing that usage_events_by_customer_occurred (mode, customer_id, occurred_at, id)
-- does not: every query by customer names the mode too.
DROP INDEX IF EXISTS usage_events_by_customer
