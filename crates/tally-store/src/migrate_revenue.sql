-- Issue 15, revenue recognition. The ledger's record of a grant's issue keeps the grant's cost
-- basis too (the fiat paid per unit, and its currency, for credit bought through a top-up),
-- so that the revenue report values every posting from the ledger alone. Grants issued before
-- this migration take the basis their row holds and the currency of the top-up that made them.
ALTER TABLE ledger_grants ADD COLUMN cost_basis TEXT;
ALTER TABLE ledger_grants ADD COLUMN cost_currency TEXT;
UPDATE ledger_grants SET
    cost_basis = (SELECT g.cost_basis FROM grants g WHERE g.id = ledger_grants.grant_id),
    cost_currency = (SELECT u.currency FROM top_ups u WHERE 'tally_top_up_' || u.id = ledger_grants.transaction_id);
UPDATE ledger_grants SET cost_basis = NULL WHERE cost_currency IS NULL;

-- The period a recurring plan fee pays for, written once in the transaction that collects the
-- fee (its ledger entry names the same transaction), so that the revenue report recognises the
-- fee ratably over it. Fees collected before this migration have none: recognised at once.
CREATE TABLE ledger_fee_periods (
    mode TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    transaction_id TEXT NOT NULL,
    service_from BIGINT NOT NULL,
    service_until BIGINT NOT NULL,
    PRIMARY KEY (customer_id, transaction_id)
)
