//! Ad-hoc charges: a debit stated as an amount, or computed from units and a unit price,
//! from a volume and a rate per package, or both (their sum).
//!
//! Rule: with a package size, the volume is billed in whole packages, rounded up (a started
//! package is a package): 2,500 tokens at 0.01 per 1,000 cost 3 × 0.01. Without one, the
//! volume is billed linearly. Results are exact: no rounding to the asset's precision.

use rust_decimal::Decimal;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChargeInputs {
    pub units: Option<Decimal>,
    pub unit_price: Option<Decimal>,
    pub volume: Option<Decimal>,
    pub volume_rate: Option<Decimal>,
    pub package_size: Option<Decimal>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChargeError {
    #[error("input_units and unit_price go together")]
    UnitsWithoutPrice,
    #[error("input_volume and volume_rate go together")]
    VolumeWithoutRate,
    #[error("package_size needs input_volume and volume_rate")]
    PackageWithoutVolume,
    #[error("package_size must be greater than zero")]
    EmptyPackage,
    #[error("the computed amount is too large")]
    Overflow,
}

impl ChargeInputs {
    pub fn is_empty(&self) -> bool {
        self == &ChargeInputs::default()
    }

    /// The amount these inputs come to, or `None` when none were given.
    pub fn amount(&self) -> Result<Option<Decimal>, ChargeError> {
        let unit_part = match (self.units, self.unit_price) {
            (Some(units), Some(price)) => Some(units.checked_mul(price).ok_or(ChargeError::Overflow)?),
            (None, None) => None,
            _ => return Err(ChargeError::UnitsWithoutPrice),
        };
        let volume_part = match (self.volume, self.volume_rate, self.package_size) {
            (Some(volume), Some(rate), None) => Some(volume.checked_mul(rate).ok_or(ChargeError::Overflow)?),
            (Some(volume), Some(rate), Some(package)) => {
                if package <= Decimal::ZERO {
                    return Err(ChargeError::EmptyPackage);
                }
                let packages = volume.checked_div(package).ok_or(ChargeError::Overflow)?.ceil();
                Some(packages.checked_mul(rate).ok_or(ChargeError::Overflow)?)
            }
            (None, None, None) => None,
            (_, _, Some(_)) if self.volume.is_none() || self.volume_rate.is_none() => {
                return Err(ChargeError::PackageWithoutVolume)
            }
            _ => return Err(ChargeError::VolumeWithoutRate),
        };
        Ok(match (unit_part, volume_part) {
            (Some(unit), Some(volume)) => Some(unit.checked_add(volume).ok_or(ChargeError::Overflow)?.normalize()),
            (part, None) | (None, part) => part.map(|amount| amount.normalize()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(text: &str) -> Option<Decimal> {
        Some(Decimal::from_str(text).unwrap())
    }

    #[test]
    fn amounts() {
        let units = ChargeInputs { units: d("3"), unit_price: d("0.25"), ..Default::default() };
        assert_eq!(units.amount(), Ok(d("0.75")));
        let linear = ChargeInputs { volume: d("1500"), volume_rate: d("0.002"), ..Default::default() };
        assert_eq!(linear.amount(), Ok(d("3")));
        let packages =
            ChargeInputs { volume: d("2500"), volume_rate: d("0.01"), package_size: d("1000"), ..Default::default() };
        assert_eq!(packages.amount(), Ok(d("0.03")));
        let exact_packages =
            ChargeInputs { volume: d("2000"), volume_rate: d("0.01"), package_size: d("1000"), ..Default::default() };
        assert_eq!(exact_packages.amount(), Ok(d("0.02")));
        let both = ChargeInputs {
            units: d("1"),
            unit_price: d("2"),
            volume: d("10"),
            volume_rate: d("0.1"),
            package_size: None,
        };
        assert_eq!(both.amount(), Ok(d("3")));
        assert_eq!(ChargeInputs::default().amount(), Ok(None));
    }

    #[test]
    fn incomplete_inputs_are_refused() {
        assert_eq!(ChargeInputs { units: d("1"), ..Default::default() }.amount(), Err(ChargeError::UnitsWithoutPrice));
        assert_eq!(
            ChargeInputs { volume_rate: d("1"), ..Default::default() }.amount(),
            Err(ChargeError::VolumeWithoutRate)
        );
        assert_eq!(
            ChargeInputs { package_size: d("1"), ..Default::default() }.amount(),
            Err(ChargeError::PackageWithoutVolume)
        );
        let empty = ChargeInputs { volume: d("1"), volume_rate: d("1"), package_size: d("0"), ..Default::default() };
        assert_eq!(empty.amount(), Err(ChargeError::EmptyPackage));
    }
}
