-- Issue 12: GET /events?has_fees= and ?billing_status=billed, newest first. Until now both
-- filtered the rows of usage_events_by_occurred as they went, reading each row of the table to
-- see its has_fees or unbilled_reason: 10,000 rows read at random to count the first page's
-- matches (45 to 77 ms at 2 million events), and every event of the mode when none matched
-- (has_fees=false where all are billed). Here both columns are in the index, so a page and
-- its count read the index alone, in order. unbilled_reason is last, read but never searched:
-- billing_status=billed is has_fees = 1 AND unbilled_reason IS NULL (an event is billed
-- exactly when it has fees, docs/api.md). repo::events::list leads with this index only when
-- no narrower filter is given (tests/api/query_plans.rs keeps it so).
CREATE INDEX IF NOT EXISTS usage_events_by_fees ON usage_events (mode, has_fees, occurred_at, id, unbilled_reason);
