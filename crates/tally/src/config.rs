//! Settings from the config file, the environment and flags (in rising precedence).

use anyhow::Context;
use serde::Deserialize;
use std::path::Path;

/// The commented default config file, also printed by `tally config`.
pub const DEFAULT_FILE: &str = include_str!("../tally.default.toml");

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub listen: String,
    pub database_url: String,
    pub platform_name: String,
    pub settle_interval_ms: u64,
    pub log: String,
    pub public_url: String,
    pub top_up_expiry_seconds: u64,
    pub webhook_interval_ms: u64,
    pub webhook_timeout_ms: u64,
    pub portal_logo_url: String,
    pub portal_accent_color: String,
    pub stripe_secret_key: String,
    pub stripe_webhook_secret: String,
    pub stripe_api_base: String,
}

impl Default for Config {
    fn default() -> Config {
        toml::from_str(DEFAULT_FILE).expect("the default config file parses")
    }
}

/// Values given on the command line or in the environment (clap reads both).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub database_url: Option<String>,
}

impl Config {
    /// Loads `path` (or `./tally.toml` when it exists), then applies environment variables and
    /// the overrides. Settings a file leaves out keep their defaults.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> anyhow::Result<Config> {
        let mut config = Config::default();
        let implicit = Path::new("tally.toml");
        let file = path.or_else(|| implicit.exists().then_some(implicit));
        if let Some(file) = file {
            let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
            let partial: PartialConfig =
                toml::from_str(&text).with_context(|| format!("{} is not a valid Tally config", file.display()))?;
            partial.apply(&mut config);
        }
        let env = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
        if let Some(value) = env("TALLY_PLATFORM_NAME") {
            config.platform_name = value;
        }
        if let Some(value) = env("TALLY_SETTLE_INTERVAL_MS") {
            config.settle_interval_ms = value.parse().context("TALLY_SETTLE_INTERVAL_MS must be a whole number")?;
        }
        if let Some(value) = env("TALLY_LOG") {
            config.log = value;
        }
        if let Some(value) = env("TALLY_PUBLIC_URL") {
            config.public_url = value;
        }
        if let Some(value) = env("TALLY_TOP_UP_EXPIRY_SECONDS") {
            config.top_up_expiry_seconds =
                value.parse().context("TALLY_TOP_UP_EXPIRY_SECONDS must be a whole number")?;
        }
        if let Some(value) = env("TALLY_WEBHOOK_INTERVAL_MS") {
            config.webhook_interval_ms = value.parse().context("TALLY_WEBHOOK_INTERVAL_MS must be a whole number")?;
        }
        if let Some(value) = env("TALLY_WEBHOOK_TIMEOUT_MS") {
            config.webhook_timeout_ms = value.parse().context("TALLY_WEBHOOK_TIMEOUT_MS must be a whole number")?;
        }
        if let Some(value) = env("TALLY_STRIPE_SECRET_KEY") {
            config.stripe_secret_key = value;
        }
        if let Some(value) = env("TALLY_STRIPE_WEBHOOK_SECRET") {
            config.stripe_webhook_secret = value;
        }
        if let Some(value) = env("TALLY_STRIPE_API_BASE") {
            config.stripe_api_base = value;
        }
        if let Some(value) = env("TALLY_PORTAL_LOGO_URL") {
            config.portal_logo_url = value;
        }
        if let Some(value) = env("TALLY_PORTAL_ACCENT_COLOR") {
            config.portal_accent_color = value;
        }
        if let Some(listen) = &overrides.listen {
            config.listen = listen.clone();
        }
        if let Some(database_url) = &overrides.database_url {
            config.database_url = database_url.clone();
        }
        Ok(config)
    }
}

impl Config {
    /// Live mode's Stripe settings, `None` when no secret key is set. A key without a webhook
    /// secret is refused: checkouts would open but never be credited.
    pub fn stripe(&self) -> anyhow::Result<Option<tally_http::payments::stripe::StripeConfig>> {
        let key = self.stripe_secret_key.trim();
        if key.is_empty() {
            return Ok(None);
        }
        if !(key.starts_with("sk_") || key.starts_with("rk_")) {
            anyhow::bail!("stripe_secret_key must be a Stripe secret (sk_...) or restricted (rk_...) key");
        }
        let webhook_secret = self.stripe_webhook_secret.trim();
        if !webhook_secret.starts_with("whsec_") {
            anyhow::bail!(
                "stripe_webhook_secret must be set to the webhook endpoint's signing secret (whsec_...) when \
                 stripe_secret_key is: without it payments are never credited"
            );
        }
        let api_base = self.stripe_api_base.trim().trim_end_matches('/');
        if !(api_base.starts_with("https://") || api_base.starts_with("http://")) {
            anyhow::bail!("stripe_api_base must be an http(s) URL");
        }
        Ok(Some(tally_http::payments::stripe::StripeConfig {
            secret_key: key.to_owned(),
            webhook_secret: webhook_secret.to_owned(),
            api_base: api_base.to_owned(),
            timeout: tally_http::payments::stripe::DEFAULT_TIMEOUT,
        }))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PartialConfig {
    listen: Option<String>,
    database_url: Option<String>,
    platform_name: Option<String>,
    settle_interval_ms: Option<u64>,
    log: Option<String>,
    public_url: Option<String>,
    top_up_expiry_seconds: Option<u64>,
    webhook_interval_ms: Option<u64>,
    webhook_timeout_ms: Option<u64>,
    portal_logo_url: Option<String>,
    portal_accent_color: Option<String>,
    stripe_secret_key: Option<String>,
    stripe_webhook_secret: Option<String>,
    stripe_api_base: Option<String>,
}

impl PartialConfig {
    fn apply(self, config: &mut Config) {
        if let Some(value) = self.listen {
            config.listen = value;
        }
        if let Some(value) = self.database_url {
            config.database_url = value;
        }
        if let Some(value) = self.platform_name {
            config.platform_name = value;
        }
        if let Some(value) = self.settle_interval_ms {
            config.settle_interval_ms = value;
        }
        if let Some(value) = self.log {
            config.log = value;
        }
        if let Some(value) = self.public_url {
            config.public_url = value;
        }
        if let Some(value) = self.top_up_expiry_seconds {
            config.top_up_expiry_seconds = value;
        }
        if let Some(value) = self.webhook_interval_ms {
            config.webhook_interval_ms = value;
        }
        if let Some(value) = self.webhook_timeout_ms {
            config.webhook_timeout_ms = value;
        }
        if let Some(value) = self.portal_logo_url {
            config.portal_logo_url = value;
        }
        if let Some(value) = self.portal_accent_color {
            config.portal_accent_color = value;
        }
        if let Some(value) = self.stripe_secret_key {
            config.stripe_secret_key = value;
        }
        if let Some(value) = self.stripe_webhook_secret {
            config.stripe_webhook_secret = value;
        }
        if let Some(value) = self.stripe_api_base {
            config.stripe_api_base = value;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_file_documents_the_defaults() {
        let config = Config::default();
        assert_eq!(config.listen, "127.0.0.1:8080");
        assert_eq!(config.database_url, "sqlite://tally-data/tally.db");
        assert_eq!(config.settle_interval_ms, 1000);
        assert_eq!((config.portal_logo_url.as_str(), config.portal_accent_color.as_str()), ("", "#4f46e5"));
        assert_eq!(
            (config.stripe_secret_key.as_str(), config.stripe_api_base.as_str()),
            ("", "https://api.stripe.com")
        );
    }

    #[test]
    fn files_override_defaults_and_flags_override_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("custom.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:9000\"\nplatform_name = \"Glitch\"\n").unwrap();
        let config = Config::load(Some(&path), &Overrides::default()).unwrap();
        assert_eq!((config.listen.as_str(), config.platform_name.as_str()), ("127.0.0.1:9000", "Glitch"));
        let flagged =
            Config::load(Some(&path), &Overrides { listen: Some("0.0.0.0:1".into()), database_url: None }).unwrap();
        assert_eq!(flagged.listen, "0.0.0.0:1");
        std::fs::write(&path, "lisen = \"typo\"\n").unwrap();
        assert!(Config::load(Some(&path), &Overrides::default()).is_err(), "unknown settings are refused");
    }

    #[test]
    fn stripe_needs_a_key_and_a_webhook_secret() {
        let mut config = Config::default();
        assert!(config.stripe().unwrap().is_none(), "no key, no Stripe");
        config.stripe_secret_key = "sk_test_123".into();
        assert!(config.stripe().is_err(), "a key without a webhook secret is refused");
        config.stripe_webhook_secret = "whsec_abc".into();
        let stripe = config.stripe().unwrap().unwrap();
        assert_eq!((stripe.secret_key.as_str(), stripe.api_base.as_str()), ("sk_test_123", "https://api.stripe.com"));
        config.stripe_secret_key = "pk_live_123".into();
        assert!(config.stripe().is_err(), "a publishable key cannot make charges");
    }
}
