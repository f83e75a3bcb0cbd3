-- Every usage fee is written into each index of event_fees. This one is a prefix of
-- event_fees_by_customer_time (customer_id, occurred_at, id), which serves every query it served.
DROP INDEX IF EXISTS event_fees_by_customer
