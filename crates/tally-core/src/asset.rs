//! Asset codes: fiat currencies (built in) and custom assets (created by the platform).

use crate::currency;

/// The most decimal places a custom asset may have.
pub const MAX_PRECISION: u32 = 12;
/// The precision a custom asset gets when none is given.
pub const DEFAULT_PRECISION: u32 = 2;
pub const MAX_CODE_LENGTH: usize = 16;

/// A validated, upper-case asset code. Codes are case-insensitive on input.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AssetCode(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssetCodeError {
    #[error("must be 1 to 16 characters: letters, digits and underscores, starting with a letter")]
    Malformed,
}

impl AssetCode {
    pub fn parse(text: &str) -> Result<AssetCode, AssetCodeError> {
        let upper = text.trim().to_ascii_uppercase();
        let mut chars = upper.chars();
        let starts_with_letter = chars.next().is_some_and(|first| first.is_ascii_uppercase());
        let rest_ok = chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        if !starts_with_letter || !rest_ok || upper.len() > MAX_CODE_LENGTH {
            return Err(AssetCodeError::Malformed);
        }
        Ok(AssetCode(upper))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The minor units when this code is an ISO 4217 currency.
    pub fn currency_minor_units(&self) -> Option<u32> {
        currency::minor_units(&self.0)
    }

    pub fn is_currency(&self) -> bool {
        currency::is_currency(&self.0)
    }
}

impl std::fmt::Display for AssetCode {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.0)
    }
}

/// A symbol is one user-perceived character: a letter, a sign or an emoji (possibly several
/// code points joined, as in flags or skin tones). We accept up to 8 code points with no
/// whitespace or control characters, and at most one "base" character outside the joiners
/// and modifiers that build a single emoji.
pub fn is_single_symbol(text: &str) -> bool {
    let chars: Vec<char> = text.chars().collect();
    if chars.is_empty() || chars.len() > 8 {
        return false;
    }
    if chars.iter().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    let is_joiner_or_modifier = |c: char| {
        matches!(c as u32,
            0x200D            // zero width joiner
            | 0xFE0E..=0xFE0F // variation selectors
            | 0x1F3FB..=0x1F3FF // skin tone modifiers
            | 0x20E3          // combining keycap
            | 0xE0020..=0xE007F // tag characters (subdivision flags)
        )
    };
    let is_regional_indicator = |c: char| matches!(c as u32, 0x1F1E6..=0x1F1FF);
    let bases: Vec<char> = chars.iter().copied().filter(|c| !is_joiner_or_modifier(*c)).collect();
    let joined = chars.contains(&'\u{200D}');
    match bases.len() {
        1 => true,
        2 => bases.iter().all(|c| is_regional_indicator(*c)) || joined,
        _ => joined,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_upper_cased_and_checked() {
        assert_eq!(AssetCode::parse("img").unwrap().as_str(), "IMG");
        assert_eq!(AssetCode::parse("VIDGENMIN").unwrap().as_str(), "VIDGENMIN");
        assert!(AssetCode::parse("").is_err());
        assert!(AssetCode::parse("1ABC").is_err());
        assert!(AssetCode::parse("A-B").is_err());
        assert!(AssetCode::parse("ABCDEFGHIJKLMNOPQ").is_err());
        assert!(AssetCode::parse("usd").unwrap().is_currency());
    }

    #[test]
    fn symbols_are_one_character_or_emoji() {
        for ok in ["$", "€", "⏰", "📸", "👍🏽", "🇺🇸", "👨‍👩‍👧"] {
            assert!(is_single_symbol(ok), "{ok} should be accepted");
        }
        for bad in ["", "ab", "$$", " ", "📸📸"] {
            assert!(!is_single_symbol(bad), "{bad} should be refused");
        }
    }
}
