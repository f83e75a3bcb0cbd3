-- Issue 12: the auto top-up claim reads only the accounts that may have fallen below their
-- threshold, through a partial index, instead of every enabled setting each second.
-- `maybe_due` is set when a balance drops to or under the threshold (repo::wallets::save, a
-- comparison that may err towards 1 only) and when the settings are saved, and cleared by the
-- claim once it has found, exactly and under the customer's lock, that the account is not below.
-- It is a hint, never a fact: a 1 too many costs one look, and no path lowers a balance without
-- setting it. Existing settings start as candidates.
ALTER TABLE auto_top_ups ADD COLUMN maybe_due BIGINT NOT NULL DEFAULT 1;
CREATE INDEX IF NOT EXISTS auto_top_ups_maybe_due ON auto_top_ups (updated_at, customer_id, account_name, asset) WHERE maybe_due = 1
