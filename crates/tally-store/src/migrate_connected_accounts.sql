-- Credyt for Platforms: the platform's connected accounts. Each one's data lives under its
-- own mode (`test:acc_…` or `live:acc_…`), so every existing table partitions it already,
-- and this table only names the accounts. An external id is unique per environment.
-- (No semicolons in comments: the migration runner splits statements on them.)
CREATE TABLE connected_accounts (
    id TEXT PRIMARY KEY,
    environment TEXT NOT NULL,
    name TEXT NOT NULL,
    external_id TEXT,
    metadata TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE UNIQUE INDEX connected_accounts_by_external_id ON connected_accounts (environment, external_id);

CREATE INDEX connected_accounts_by_created ON connected_accounts (environment, created_at, id);

-- Credyt names accounts `acc_…`, and so the platform's own id follows.
UPDATE tally_meta SET value = 'acc_' || substr(value, 6) WHERE key = 'platform_account_id' AND substr(value, 1, 5) = 'acct_';

-- A webhook event of a connected account is kept with the platform's destinations that
-- receive it, and names the account.
ALTER TABLE webhook_events ADD COLUMN account_id TEXT;
