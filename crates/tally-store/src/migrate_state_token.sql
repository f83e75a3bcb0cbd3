-- The token of the save that last wrote an account's grants: the in-memory grant cache
-- (repo/grant_cache.rs) trusts what it holds for an account only while the row carries the
-- token it was filed under. Zero is never cached.
ALTER TABLE wallet_accounts ADD COLUMN state_token BIGINT NOT NULL DEFAULT 0;
