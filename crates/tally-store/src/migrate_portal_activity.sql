-- The billing portal's activity page reads a customer's movements newest first by their
-- own time, a page at a time from a cursor: usage fees by when their event occurred, every
-- other transaction by when it was made (usage fees left out, as the partial index's
-- condition says, spelled as the page's query spells it).
CREATE INDEX event_fees_by_customer_time ON event_fees (customer_id, occurred_at, id);
CREATE INDEX transactions_by_time ON transactions (customer_id, created_at, sequence)
    WHERE substr(id, 1, 12) <> 'tally_event_';
