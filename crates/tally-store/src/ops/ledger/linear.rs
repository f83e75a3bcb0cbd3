//! Linear fingerprints: per-key totals (an amount and a count) compared without holding the
//! keys in memory. Each side adds, for every row, `h(key) × (amount × 10^28 × 2^128 + count)`
//! into an exact integer sum, `h` a keyed 128-bit hash ([`super::fingerprints`]); rows of one
//! key may come in any order and any number (a fee at a time on one side, a stored rollup row,
//! or several shards of one, on the other). The sums are equal exactly when, for every key, the
//! totals are, but for a chance of at most 2^-128: a difference is a linear form in the keys'
//! hashes whose coefficients are the keys' differences of total, which vanishes for at most one
//! value of any one hash.
//!
//! The sums are kept exact, with no modulus that a difference could be a multiple of: every
//! amount is a `Decimal` (below 2^96 × 10^-scale), so amount × 10^28 is an integer below
//! 2^190; with the count beside it below 2^319, times the hash below 2^447, and summed over
//! fewer than 2^64 rows below 2^511, inside the 512-bit two's complement [`Wide`], whose
//! wrapping arithmetic is then the integers' own.

use rust_decimal::Decimal;

/// Limbs of [`Wide`], least significant first.
const LIMBS: usize = 8;

/// A signed 512-bit integer in two's complement, arithmetic modulo 2^512.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Wide([u64; LIMBS]);

impl Wide {
    fn from_i128(value: i128) -> Self {
        let mut limbs = [if value < 0 { u64::MAX } else { 0 }; LIMBS];
        limbs[0] = value as u64;
        limbs[1] = (value >> 64) as u64;
        Wide(limbs)
    }

    pub(super) fn add(&mut self, other: &Wide) {
        let mut carry = false;
        for (limb, &addend) in self.0.iter_mut().zip(other.0.iter()) {
            let (sum, first) = limb.overflowing_add(addend);
            let (sum, second) = sum.overflowing_add(carry as u64);
            *limb = sum;
            carry = first || second;
        }
    }

    fn mul_u64(&mut self, factor: u64) {
        let mut carry = 0_u128;
        for limb in self.0.iter_mut() {
            let product = u128::from(*limb) * u128::from(factor) + carry;
            *limb = product as u64;
            carry = product >> 64;
        }
    }

    /// Multiplies by 2^64.
    fn shift_limb(&mut self) {
        self.0.copy_within(0..LIMBS - 1, 1);
        self.0[0] = 0;
    }

    fn mul_u128(&mut self, factor: u128) {
        let mut high = *self;
        high.mul_u64((factor >> 64) as u64);
        high.shift_limb();
        self.mul_u64(factor as u64);
        self.add(&high);
    }

    fn mul_pow10(&mut self, mut exponent: u32) {
        while exponent > 0 {
            let step = exponent.min(19);
            self.mul_u64(10_u64.pow(step));
            exponent -= step;
        }
    }
}

/// `amount × 10^28`, exact (a `Decimal`'s scale is at most 28).
pub(super) fn scaled(amount: Decimal) -> Wide {
    let mut value = Wide::from_i128(amount.mantissa());
    value.mul_pow10(28 - amount.scale());
    value
}

/// The total that a key's `hash` weighs: `amount × 10^28 × 2^128 + count`, so that amount and
/// count differ only when one of them does. The count's room is 2^128, not 2^64: one key's
/// count is a sum over any number of rows (shards), each below 2^63, and fewer than 2^64 rows
/// stay below 2^127; with 2^64 of room, 2^64 forged counts could hide 10^-28 of amount.
fn weighed(hash: u128, mut amount: Wide, count: i64) -> Wide {
    amount.shift_limb();
    amount.shift_limb();
    amount.add(&Wide::from_i128(i128::from(count)));
    amount.mul_u128(hash);
    amount
}

/// The two sides of one relation of per-key totals.
#[derive(Debug, Default)]
pub(super) struct LinearSides {
    left: Wide,
    right: Wide,
}

impl LinearSides {
    /// Adds `count` rows totalling `amount` ([`scaled`]) under the key hashed to `hash`, on
    /// the left.
    pub(super) fn left(&mut self, hash: u128, amount: Wide, count: i64) {
        self.left.add(&weighed(hash, amount, count));
    }

    /// The right side's stored total, in the rollups' three parts: whole units, 10^-12 and
    /// 10^-24 units (each any size: SQL adds them without carrying across rows).
    pub(super) fn right_in_parts(&mut self, hash: u128, (units, pico, yocto): (i64, i64, i64), count: i64) {
        let mut amount = Wide::from_i128(i128::from(units));
        amount.mul_pow10(28);
        for (part, exponent) in [(pico, 16), (yocto, 4)] {
            let mut part = Wide::from_i128(i128::from(part));
            part.mul_pow10(exponent);
            amount.add(&part);
        }
        self.right.add(&weighed(hash, amount, count));
    }

    pub(super) fn agree(&self) -> bool {
        self.left == self.right
    }

    /// Adds the sides another pass summed (of other rows: each row is weighed once, on one
    /// side, wherever it was read).
    pub(super) fn absorb(&mut self, other: &LinearSides) {
        self.left.add(&other.left);
        self.right.add(&other.right);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn amount(text: &str) -> Decimal {
        Decimal::from_str(text).unwrap()
    }

    #[test]
    fn totals_in_any_order_and_any_scale_agree_with_their_parts() {
        let mut sides = LinearSides::default();
        sides.left(7, scaled(amount("1.50")), 1);
        sides.left(9, scaled(amount("-0.000000000000000000000001")), 1);
        sides.left(7, scaled(amount("2.5")), 1);
        sides.left(u128::MAX, scaled(amount("10000000000000000000")), 1);
        sides.right_in_parts(7, (3, 999_999_999_999, 1_000_000_000_000), 2);
        sides.right_in_parts(9, (-1, 999_999_999_999, 999_999_999_999), 1);
        // One key's total in two rows (shards), past what one row's units hold.
        sides.right_in_parts(u128::MAX, (5_000_000_000_000_000_000, 0, 0), 0);
        sides.right_in_parts(u128::MAX, (5_000_000_000_000_000_000, 0, 0), 1);
        assert!(sides.agree());
    }

    #[test]
    fn a_total_off_by_the_least_amount_or_one_row_disagrees() {
        for (parts, count) in [((4, 0, 1), 2), ((4, 0, 0), 3), ((4, 0, 0), 1), ((3, 0, 0), 2 + (1 << 62))] {
            let mut sides = LinearSides::default();
            let mut total = scaled(amount("1.5"));
            total.add(&scaled(amount("2.5")));
            sides.left(u128::MAX - 5, total, 2);
            sides.right_in_parts(u128::MAX - 5, parts, count);
            assert!(!sides.agree(), "{parts:?} in {count} rows");
        }
    }

    /// One key's count is summed over any number of shard rows: 10^-24 of amount missing
    /// (10^4 × 10^-28) and 10^4 × 2^64 forged counts, spread over 20,001 rows each below 2^63,
    /// must not cancel (they did while the count had only 2^64 of room).
    #[test]
    fn a_missing_amount_is_not_hidden_by_forged_counts_over_many_rows() {
        let mut sides = LinearSides::default();
        sides.left(3, scaled(amount("4")), 1);
        sides.right_in_parts(3, (3, 999_999_999_999, 999_999_999_999), 1);
        for _ in 0..20_000 {
            sides.right_in_parts(3, (0, 0, 0), i64::MAX);
        }
        sides.right_in_parts(3, (0, 0, 0), 20_000);
        assert!(!sides.agree());
    }

    #[test]
    fn the_same_total_under_another_key_disagrees() {
        let mut sides = LinearSides::default();
        sides.left(11, scaled(amount("4")), 2);
        sides.right_in_parts(12, (4, 0, 0), 2);
        assert!(!sides.agree());
    }
}
