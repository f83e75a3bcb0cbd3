//! Exact amounts. Every amount is a `Decimal`; floats never touch money.
//!
//! Limits: an amount's magnitude is below 10^15 and it has at most 12 decimal places. Both are
//! far beyond any real balance and keep every product of two amounts inside `Decimal`'s 28
//! significant digits, so arithmetic on valid input cannot overflow silently.

use rust_decimal::prelude::*;
use rust_decimal::RoundingStrategy;

/// The largest magnitude an amount may have (exclusive).
pub fn max_amount() -> Decimal {
    Decimal::from(1_000_000_000_000_000i64)
}

/// The most decimal places an amount may carry.
pub const MAX_SCALE: u32 = 12;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("must be less than 1000000000000000 in magnitude")]
    TooLarge,
    #[error("must have at most 12 decimal places")]
    TooPrecise,
    #[error("must be greater than zero")]
    NotPositive,
    #[error("must not be zero")]
    Zero,
}

/// Checks the documented limits on any amount that enters Tally.
pub fn check_amount(amount: Decimal) -> Result<Decimal, AmountError> {
    if amount.abs() >= max_amount() {
        return Err(AmountError::TooLarge);
    }
    if amount.normalize().scale() > MAX_SCALE {
        return Err(AmountError::TooPrecise);
    }
    Ok(amount.normalize())
}

pub fn check_positive(amount: Decimal) -> Result<Decimal, AmountError> {
    let amount = check_amount(amount)?;
    if amount <= Decimal::ZERO {
        return Err(AmountError::NotPositive);
    }
    Ok(amount)
}

pub fn check_non_zero(amount: Decimal) -> Result<Decimal, AmountError> {
    let amount = check_amount(amount)?;
    if amount.is_zero() {
        return Err(AmountError::Zero);
    }
    Ok(amount)
}

/// Rounds toward zero to `places` decimal places: the rule for converting money into an asset,
/// so that a customer never receives more than was paid for.
pub fn round_down(amount: Decimal, places: u32) -> Decimal {
    amount.round_dp_with_strategy(places, RoundingStrategy::ToZero).normalize()
}

/// Rounds half away from zero to `places` places: used only for displaying derived rates.
pub fn round_display(amount: Decimal, places: u32) -> Decimal {
    amount.round_dp_with_strategy(places, RoundingStrategy::MidpointAwayFromZero).normalize()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(text: &str) -> Decimal {
        Decimal::from_str(text).unwrap()
    }

    #[test]
    fn round_down_never_rounds_up() {
        assert_eq!(round_down(d("66.6666"), 2), d("66.66"));
        assert_eq!(round_down(d("66.669"), 2), d("66.66"));
        assert_eq!(round_down(d("100"), 2), d("100"));
        assert_eq!(round_down(d("0.009"), 2), d("0"));
        assert_eq!(round_down(d("5.5"), 0), d("5"));
    }

    #[test]
    fn limits_are_enforced() {
        assert_eq!(check_amount(d("999999999999999.999999999999")), Ok(d("999999999999999.999999999999")));
        assert_eq!(check_amount(d("1000000000000000")), Err(AmountError::TooLarge));
        assert_eq!(check_amount(d("0.0000000000001")), Err(AmountError::TooPrecise));
        assert_eq!(check_amount(d("1.5000000000000000")), Ok(d("1.5")));
        assert_eq!(check_positive(d("0")), Err(AmountError::NotPositive));
        assert_eq!(check_non_zero(d("-0.00")), Err(AmountError::Zero));
    }
}
