-- Issue 14, saved cards show when they expire: the month (1 to 12) and four-digit year the
-- provider reports for the card, empty when it reports none (cards saved before this).
ALTER TABLE payment_methods ADD COLUMN expiry_month BIGINT;
ALTER TABLE payment_methods ADD COLUMN expiry_year BIGINT;
