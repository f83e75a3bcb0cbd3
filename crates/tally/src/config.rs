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
    pub log_format: String,
    pub metrics_token: String,
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
    pub log_format: Option<String>,
}

impl Config {
    /// Loads `path` (or `./tally.toml` when it exists), then applies environment variables and
    /// the overrides. Settings a file leaves out keep their defaults.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> anyhow::Result<Config> {
        Config::load_with_env(path, overrides, &|name| std::env::var(name).ok())
    }

    /// [`Config::load`] with the environment read through `env`.
    pub fn load_with_env(
        path: Option<&Path>,
        overrides: &Overrides,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Config> {
        let mut config = Config::default();
        let implicit = Path::new("tally.toml");
        let file = path.or_else(|| implicit.exists().then_some(implicit));
        if let Some(file) = file {
            let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
            let partial: PartialConfig =
                toml::from_str(&text).with_context(|| format!("{} is not a valid Tally config", file.display()))?;
            partial.apply(&mut config);
        }
        let env = |name: &str| env(name).filter(|value| !value.is_empty());
        // The variables hosting platforms set, below Tally's own (TALLY_DATABASE_URL and
        // TALLY_LISTEN arrive as overrides) and above the file.
        if let Some(value) = env("DATABASE_URL") {
            config.database_url = value;
        }
        if let Some(value) = env("PORT") {
            let port: u16 = value.trim().parse().context("PORT must be a port number (0 to 65535)")?;
            config.listen = format!("0.0.0.0:{port}");
        }
        if let Some(value) = env("TALLY_PLATFORM_NAME") {
            config.platform_name = value;
        }
        if let Some(value) = env("TALLY_SETTLE_INTERVAL_MS") {
            config.settle_interval_ms = value.parse().context("TALLY_SETTLE_INTERVAL_MS must be a whole number")?;
        }
        if let Some(value) = env("TALLY_LOG") {
            config.log = value;
        }
        if let Some(value) = env("TALLY_LOG_FORMAT") {
            config.log_format = value;
        }
        if let Some(value) = env("TALLY_METRICS_TOKEN") {
            config.metrics_token = value;
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
        if let Some(log_format) = &overrides.log_format {
            config.log_format = log_format.clone();
        }
        config.log_format()?;
        Ok(config)
    }
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (coloured only when stderr is a terminal).
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl Config {
    pub fn log_format(&self) -> anyhow::Result<LogFormat> {
        match self.log_format.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => anyhow::bail!("log_format must be text or json, not {other:?}"),
        }
    }

    /// The metrics token, `None` when /metrics is open.
    pub fn metrics_token(&self) -> Option<String> {
        Some(self.metrics_token.trim().to_owned()).filter(|token| !token.is_empty())
    }
}

/// The database URL with its password, if any, replaced by `***`: what logs and messages show.
/// `postgres://tally:s3cret@db/tally` becomes `postgres://tally:***@db/tally`, and a
/// `password=` query parameter is hidden the same way.
pub fn redact_database_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((user_info, host)) => match user_info.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            None => format!("{user_info}@{host}"),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
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
    log_format: Option<String>,
    metrics_token: Option<String>,
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
        if let Some(value) = self.log_format {
            config.log_format = value;
        }
        if let Some(value) = self.metrics_token {
            config.metrics_token = value;
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
            Config::load(Some(&path), &Overrides { listen: Some("0.0.0.0:1".into()), ..Overrides::default() }).unwrap();
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

    /// Loads with `variables` as the whole environment.
    fn load_with(path: Option<&Path>, overrides: &Overrides, variables: &[(&str, &str)]) -> anyhow::Result<Config> {
        let lookup = |name: &str| variables.iter().find(|(key, _)| *key == name).map(|(_, value)| value.to_string());
        Config::load_with_env(path, overrides, &lookup)
    }

    #[test]
    fn database_url_and_port_from_the_platform_sit_between_tally_variables_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tally.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:9000\"\ndatabase_url = \"sqlite://file.db\"\n").unwrap();
        let platform = [("DATABASE_URL", "postgres://app@db/app"), ("PORT", "5000")];
        let config = load_with(Some(&path), &Overrides::default(), &platform).unwrap();
        assert_eq!((config.database_url.as_str(), config.listen.as_str()), ("postgres://app@db/app", "0.0.0.0:5000"));
        // TALLY_DATABASE_URL and TALLY_LISTEN (read by clap, like the flags) come as overrides.
        let overrides = Overrides {
            listen: Some("127.0.0.1:7000".into()),
            database_url: Some("sqlite://tally.db".into()),
            ..Overrides::default()
        };
        let config = load_with(Some(&path), &overrides, &platform).unwrap();
        assert_eq!((config.database_url.as_str(), config.listen.as_str()), ("sqlite://tally.db", "127.0.0.1:7000"));
        let config = load_with(Some(&path), &Overrides::default(), &[]).unwrap();
        assert_eq!((config.database_url.as_str(), config.listen.as_str()), ("sqlite://file.db", "127.0.0.1:9000"));
        assert!(load_with(None, &Overrides::default(), &[("PORT", "http")]).is_err(), "a PORT that is no port");
    }

    #[test]
    fn log_format_is_text_or_json() {
        assert_eq!(Config::default().log_format().unwrap(), LogFormat::Text);
        let config = load_with(None, &Overrides::default(), &[("TALLY_LOG_FORMAT", "json")]).unwrap();
        assert_eq!(config.log_format().unwrap(), LogFormat::Json);
        let flagged = Overrides { log_format: Some("text".into()), ..Overrides::default() };
        let config = load_with(None, &flagged, &[("TALLY_LOG_FORMAT", "json")]).unwrap();
        assert_eq!(config.log_format().unwrap(), LogFormat::Text, "the flag wins");
        assert!(load_with(None, &Overrides::default(), &[("TALLY_LOG_FORMAT", "xml")]).is_err());
    }

    #[test]
    fn database_passwords_never_show() {
        assert_eq!(redact_database_url("postgres://tally:s3cret@db:5432/tally"), "postgres://tally:***@db:5432/tally");
        assert_eq!(
            redact_database_url("postgresql://a:b:c@db/x?sslmode=require"),
            "postgresql://a:***@db/x?sslmode=require"
        );
        assert_eq!(
            redact_database_url("postgres://db/tally?user=tally&password=s3cret"),
            "postgres://db/tally?user=tally&password=***"
        );
        assert_eq!(redact_database_url("postgres://postgres@127.0.0.1:5432/x"), "postgres://postgres@127.0.0.1:5432/x");
        assert_eq!(redact_database_url("sqlite://tally-data/tally.db"), "sqlite://tally-data/tally.db");
        assert_eq!(redact_database_url("tally.db"), "tally.db");
    }
}
