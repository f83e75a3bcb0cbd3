-- Issue 10: events that cannot be priced are stored unbilled, with why. `unbilled_reason` is a
-- stable code (see ops::events::UnbilledCode) and `unbilled_message` says it in words. Both are
-- NULL for a billed event: an event is billed exactly when it has fees.
ALTER TABLE usage_events ADD COLUMN unbilled_reason TEXT;
ALTER TABLE usage_events ADD COLUMN unbilled_message TEXT;

-- Events stored without fees before this migration were those no price matched: either no
-- subscription was active when they occurred, or none of the active versions priced their type.
UPDATE usage_events SET unbilled_reason = 'no_subscription',
    unbilled_message = 'no subscription of the customer was active at the event''s occurred_at'
WHERE has_fees = 0 AND NOT EXISTS (
    SELECT 1 FROM subscription_history h
    WHERE h.mode = usage_events.mode AND h.customer_id = usage_events.customer_id
      AND h.active_from <= usage_events.occurred_at
      AND (h.active_to IS NULL OR h.active_to > usage_events.occurred_at)
);
UPDATE usage_events SET unbilled_reason = 'no_matching_price',
    unbilled_message = 'no usage price of the product versions the customer was subscribed to at the event''s occurred_at has its event_type'
WHERE has_fees = 0 AND unbilled_reason IS NULL;

-- For `GET /events?billing_status=unbilled` and `?unbilled_reason=`: unbilled events are few,
-- so the index holds only them.
CREATE INDEX usage_events_unbilled ON usage_events (mode, unbilled_reason, occurred_at) WHERE unbilled_reason IS NOT NULL;
