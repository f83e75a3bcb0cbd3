-- Saved cards the customer manages in the billing portal: a removed card is kept (auto
-- top-up settings and history may name it) but never listed or charged again, and one card
-- per customer is the default.
ALTER TABLE payment_methods ADD COLUMN removed_at BIGINT;
ALTER TABLE payment_methods ADD COLUMN is_default BIGINT NOT NULL DEFAULT 0;
