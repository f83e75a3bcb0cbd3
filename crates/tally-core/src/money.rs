//! Exact amounts. Every amount is a `Decimal`; floats never touch money.
//!
//! Limits: an amount's magnitude is below 10^15 and it has at most 12 decimal places. Both are
//! far beyond any real balance and keep every product of two amounts inside `Decimal`'s 28
//! significant digits, so arithmetic on valid input cannot overflow silently. A balance obeys
//! the same bound ([`max_balance`]): what an account holds, and what it owes, stay below 10^15,
//! and a change that would pass it is refused. Arithmetic on amounts is checked
//! (`checked_add`, `checked_mul`, …) so that it fails rather than panics.
//!
//! Amounts arrive as text ([`parse_exact`]): a JSON number, taken exactly or not at all.

use rust_decimal::prelude::*;
use rust_decimal::RoundingStrategy;

/// The largest magnitude an amount may have (exclusive).
pub fn max_amount() -> Decimal {
    Decimal::from(1_000_000_000_000_000i64)
}

/// The most decimal places an amount may carry.
pub const MAX_SCALE: u32 = 12;

/// The bound (exclusive) on what one account holds (`available + pending_in`) and on what it
/// owes (its debt): the same as on a single amount.
pub fn max_balance() -> Decimal {
    max_amount()
}

/// Parses a decimal written as a JSON number (`-12`, `0.25`, `1.5e3`): an optional minus, digits,
/// an optional fraction and an optional exponent; nothing else (no `+`, spaces, `_` separators,
/// leading `.` or trailing `.`). `None` when the text is not such a number, or when `Decimal`
/// cannot hold its value exactly (more than 28 significant digits or decimal places): a number
/// is never rounded on the way in.
pub fn parse_exact(text: &str) -> Option<Decimal> {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(at) => (&unsigned[..at], Some(&unsigned[at + 1..])),
        None => (unsigned, None),
    };
    let (whole, fraction) = match mantissa.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (mantissa, None),
    };
    let all_digits = |part: &str| !part.is_empty() && part.bytes().all(|byte| byte.is_ascii_digit());
    if !all_digits(whole) || fraction.is_some_and(|fraction| !all_digits(fraction)) {
        return None;
    }
    let exponent: i64 = match exponent {
        None => 0,
        Some(exponent) => {
            let digits = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
            if !all_digits(digits) {
                return None;
            }
            // Any exponent past a million is as out of reach for a `Decimal` as a million.
            let significant = digits.trim_start_matches('0');
            let magnitude: i64 = if significant.len() > 6 { 1_000_000 } else { significant.parse().unwrap_or(0) };
            if exponent.starts_with('-') {
                -magnitude
            } else {
                magnitude
            }
        }
    };
    let fraction = fraction.unwrap_or("");
    let digits = format!("{whole}{fraction}");
    let digits = digits.trim_start_matches('0');
    let significant = digits.trim_end_matches('0');
    if significant.is_empty() {
        return Some(Decimal::ZERO);
    }
    // value = significant × 10^(trailing zeros + exponent − fraction length)
    let trailing_zeros = (digits.len() - significant.len()) as i64;
    let power = trailing_zeros + exponent - fraction.len() as i64;
    if significant.len() > 29 || !(-28..=28).contains(&power) {
        return None;
    }
    let mut mantissa: i128 = significant.parse().ok()?;
    let scale = if power >= 0 {
        for _ in 0..power {
            mantissa = mantissa.checked_mul(10)?;
        }
        0
    } else {
        u32::try_from(-power).ok()?
    };
    if negative {
        mantissa = -mantissa;
    }
    Decimal::try_from_i128_with_scale(mantissa, scale).ok().map(|value| value.normalize())
}

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
    fn numbers_parse_exactly_or_not_at_all() {
        assert_eq!(parse_exact("14.566678"), Some(d("14.566678")));
        assert_eq!(parse_exact("-0.25"), Some(d("-0.25")));
        assert_eq!(parse_exact("1.5e3"), Some(d("1500")));
        assert_eq!(parse_exact("25E-2"), Some(d("0.25")));
        assert_eq!(parse_exact("1e+2"), Some(d("100")));
        assert_eq!(parse_exact("0e999999999999999999999"), Some(Decimal::ZERO));
        assert_eq!(parse_exact("1000000000000000000000000000"), Some(d("1000000000000000000000000000")));
        assert_eq!(parse_exact("0.000000000000000000000000001"), Some(d("0.000000000000000000000000001")));
        // Would need rounding to fit: refused, never rounded.
        assert_eq!(parse_exact("5.00000000000000000000000000001"), None);
        assert_eq!(parse_exact("1e400"), None);
        assert_eq!(parse_exact("1e-400"), None);
        assert_eq!(parse_exact("99999999999999999999999999999999"), None);
        // Not a JSON number.
        for text in ["1_000", "+5", " 5", "5 ", ".5", "5.", "1,000", "0x10", "NaN", "", "-", "1e", "1e+", "--1", "١"] {
            assert_eq!(parse_exact(text), None, "{text:?}");
        }
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
