//! The open grants of recently saved accounts, kept in memory so that a write to an account
//! does not read them again: for an account with thousands of grants, what makes its debits
//! cost what they touch; for any account, a statement fewer.
//!
//! Correctness never rests on the cache. Every save writes a fresh random `state_token` to
//! the account's row, in the same transaction as the grants it changed, and files the open
//! grants under that token. A load reads the row (it must, to lock it) and uses the cached
//! grants only when the row's token is the one they were filed under. A transaction that rolls
//! back leaves the old token in the row, so its cached grants are never used; another server
//! (PostgreSQL) writes its own tokens, which this cache has never seen. Tokens are random, so
//! a token that appears in the row was written by exactly one save. Anyone who edits grants
//! by hand must reset the token (`UPDATE wallet_accounts SET state_token = 0`): zero is never
//! cached.

use super::wallets::AccountKey;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use tally_core::wallet::Grant;

/// The most grants the cache holds over all accounts, each account counting one more than its
/// grants; past it, it starts over. About 150 bytes each, so at most about 60 MB: enough for
/// `tally bench --grants 3000` over its 100 customers. Every account is kept, however few its
/// grants: a load takes them out and its save files them again, so a hit costs no copy, while
/// a miss costs a statement.
const MAX_GRANTS: usize = 400_000;
/// Accounts with at least this many open grants stay when a full cache makes room.
const LARGE: usize = 8;

struct Entry {
    token: i64,
    grants: Vec<Grant>,
}

#[derive(Default)]
struct Cache {
    entries: HashMap<AccountKey, Entry>,
    grants: usize,
}

fn cache() -> std::sync::MutexGuard<'static, Cache> {
    static CACHE: OnceLock<Mutex<Cache>> = OnceLock::new();
    CACHE.get_or_init(Default::default).lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A new token for a save: random and never zero.
pub fn new_token() -> i64 {
    loop {
        let token = rand::random::<i64>();
        if token != 0 {
            return token;
        }
    }
}

/// The open grants filed under `token` for `key`, in burn order.
/// Takes the grants filed under `token` out of the cache: the load that asks is about to
/// change them, and its save files them again under a new token. (A load whose transaction
/// rolls back leaves the cache without them, so the next load reads them from the database:
/// a miss, never a wrong answer.) Taking instead of copying spares a copy of every grant.
pub fn take(key: &AccountKey, token: i64) -> Option<Vec<Grant>> {
    if token == 0 {
        return None;
    }
    let mut cache = cache();
    if cache.entries.get(key)?.token != token {
        return None;
    }
    let entry = cache.entries.remove(key)?;
    cache.grants -= entry.grants.len() + 1;
    Some(entry.grants)
}

/// Files `grants` (the account's open grants, in burn order) under `token`, replacing what
/// was filed for `key`.
pub fn put(key: &AccountKey, token: i64, grants: impl Iterator<Item = Grant>) {
    let grants: Vec<Grant> = grants.collect();
    let mut cache = cache();
    if let Some(old) = cache.entries.remove(key) {
        cache.grants -= old.grants.len() + 1;
    }
    if token == 0 {
        return;
    }
    if cache.grants + grants.len() + 1 > MAX_GRANTS {
        // Full: drop the small accounts first, which cost a short read each to load again,
        // and everything only if the large ones alone fill it.
        cache.entries.retain(|_, entry| entry.grants.len() >= LARGE);
        cache.grants = cache.entries.values().map(|entry| entry.grants.len() + 1).sum();
        if cache.grants + grants.len() + 1 > MAX_GRANTS {
            cache.entries.clear();
            cache.grants = 0;
        }
    }
    cache.grants += grants.len() + 1;
    cache.entries.insert(key.clone(), Entry { token, grants });
}
