//! Documented limits on everything a client sends (see docs/api.md).

/// The largest request body, in bytes.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
pub const DEFAULT_PAGE_SIZE: i64 = 20;
pub const MAX_PAGE_SIZE: i64 = 100;
/// The deepest `offset` of a list that gives keyset cursors: an offset reads and skips every
/// row before it (70 ms at a million rows, and growing), a cursor reads only its page. The
/// same bound as an inexact `total_count` (`repo::COUNT_LIMIT`): past it, a client follows `next`.
pub const MAX_OFFSET: i64 = 10_000;
/// Names, labels, emails, external ids and query values.
pub const MAX_TEXT_CHARS: usize = 255;
/// Descriptions.
pub const MAX_DESCRIPTION_CHARS: usize = 1000;
/// Client-supplied ids such as transaction ids.
pub const MAX_ID_CHARS: usize = 255;
pub const MAX_METADATA_PAIRS: usize = 50;
pub const MAX_METADATA_KEY_CHARS: usize = 40;
pub const MAX_METADATA_VALUE_CHARS: usize = 500;
/// Starting rates given when creating an asset.
pub const MAX_STARTING_RATES: usize = 50;
pub const MAX_ACCOUNT_NAME_CHARS: usize = 64;
