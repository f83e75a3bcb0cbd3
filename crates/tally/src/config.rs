//! Settings from the config file, the environment and flags (in rising precedence), layered
//! by figment: each setting is a field of [`Config`] and a line of the default file, and is
//! read from the file, from `TALLY_<NAME>` and (for three of them) from a flag with no further
//! code.

use anyhow::Context;
use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Serialize};
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
    pub ingest_rounds: u64,
    pub log: String,
    pub log_format: String,
    pub metrics_token: String,
    pub public_url: String,
    pub top_up_expiry_seconds: u64,
    pub hold_expiry_seconds: u64,
    pub hold_max_expiry_seconds: u64,
    pub webhook_interval_ms: u64,
    pub webhook_timeout_ms: u64,
    pub webhook_retention_days: u64,
    pub portal_logo_url: String,
    pub portal_accent_color: String,
    pub portal_frame_ancestors: String,
    pub portal_home_url: String,
    pub stripe_secret_key: String,
    pub stripe_webhook_secret: String,
    pub stripe_api_base: String,
}

impl Config {
    /// How long holds last by default and at most: at least a minute each, and the default
    /// no longer than the maximum.
    pub fn hold_limits(&self) -> anyhow::Result<tally_store::ops::holds::HoldLimits> {
        let (default, max) = (self.hold_expiry_seconds, self.hold_max_expiry_seconds);
        if default < 60 || max < 60 {
            anyhow::bail!("hold_expiry_seconds and hold_max_expiry_seconds must be at least 60");
        }
        if default > max {
            anyhow::bail!("hold_expiry_seconds ({default}) must not be above hold_max_expiry_seconds ({max})");
        }
        // Capped at a century, far below where a duration could overflow.
        let seconds = |value: u64| chrono::Duration::seconds(value.min(100 * 365 * 86_400) as i64);
        Ok(tally_store::ops::holds::HoldLimits { default_expiry: seconds(default), max_expiry: seconds(max) })
    }
}

impl Default for Config {
    fn default() -> Config {
        toml::from_str(DEFAULT_FILE).expect("the default config file parses")
    }
}

/// Values given on the command line or in the environment (clap reads both).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
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
        let implicit = Path::new("tally.toml");
        let file = path.or_else(|| implicit.exists().then_some(implicit));
        let mut figment = Figment::from(Toml::string(DEFAULT_FILE));
        if let Some(file) = file {
            // Figment takes a missing file for an empty one; one named by --config must exist.
            std::fs::metadata(file).with_context(|| format!("cannot read {}", file.display()))?;
            figment = figment.merge(Toml::file(file));
        }
        let env = |name: &str| env(name).filter(|value| !value.is_empty());
        // The variables hosting platforms set, below Tally's own and above the file.
        let mut platform = Dict::new();
        if let Some(value) = env("DATABASE_URL") {
            platform.insert("database_url".into(), value.into());
        }
        if let Some(value) = env("PORT") {
            let port: u16 = value.trim().parse().context("PORT must be a port number (0 to 65535)")?;
            platform.insert("listen".into(), format!("0.0.0.0:{port}").into());
        }
        let config: Config = figment
            .merge(Variables { name: "platform variables", values: platform })
            .merge(Variables { name: "TALLY_ variables", values: tally_variables(&env) })
            .merge(Serialized::defaults(overrides))
            .extract_lossy()
            .map_err(|error| anyhow::anyhow!("invalid setting: {error}"))?;
        config.log_format()?;
        Ok(config)
    }
}

/// `TALLY_<NAME>` for every setting the default file has (so TALLY_CONFIG and the test
/// variables are not taken for settings). An empty variable counts as unset.
fn tally_variables(env: &dyn Fn(&str) -> Option<String>) -> Dict {
    let defaults: toml::Table = toml::from_str(DEFAULT_FILE).expect("the default config file parses");
    defaults
        .keys()
        .filter_map(|name| Some((name.clone(), Value::from(env(&format!("TALLY_{}", name.to_ascii_uppercase()))?))))
        .collect()
}

/// Settings read from environment variables: text, which `extract_lossy` turns into numbers
/// where a setting is one.
struct Variables {
    name: &'static str,
    values: Dict,
}

impl Provider for Variables {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name).interpolater(|_, path| format!("TALLY_{}", path.join("_").to_ascii_uppercase()))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.values.clone()))
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
    /// The origins allowed to frame the portal: `https://…` or `http://…` origins only, so
    /// that nothing else reaches the Content-Security-Policy header.
    pub fn portal_frame_ancestors(&self) -> anyhow::Result<Vec<String>> {
        self.portal_frame_ancestors
            .split_whitespace()
            .map(|origin| {
                let valid = (origin.starts_with("https://") || origin.starts_with("http://"))
                    && origin.chars().all(|c| c.is_ascii_alphanumeric() || ":/.-*".contains(c));
                anyhow::ensure!(valid, "portal_frame_ancestors: {origin:?} is not an http(s) origin");
                Ok(origin.trim_end_matches('/').to_owned())
            })
            .collect()
    }

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
    fn hold_expiry_defaults_to_a_day_at_most_a_week_and_the_default_never_passes_the_maximum() {
        let limits = Config::default().hold_limits().unwrap();
        assert_eq!((limits.default_expiry, limits.max_expiry), (chrono::Duration::days(1), chrono::Duration::days(7)));
        let env = [("TALLY_HOLD_EXPIRY_SECONDS", "600"), ("TALLY_HOLD_MAX_EXPIRY_SECONDS", "3600")];
        let limits = load_with(None, &Overrides::default(), &env).unwrap().hold_limits().unwrap();
        let expected = (chrono::Duration::minutes(10), chrono::Duration::hours(1));
        assert_eq!((limits.default_expiry, limits.max_expiry), expected);
        let env = [("TALLY_HOLD_EXPIRY_SECONDS", "7200"), ("TALLY_HOLD_MAX_EXPIRY_SECONDS", "3600")];
        assert!(load_with(None, &Overrides::default(), &env).unwrap().hold_limits().is_err());
    }

    #[test]
    fn every_setting_reads_its_tally_variable_and_a_bad_value_names_it() {
        let env =
            [("TALLY_SETTLE_INTERVAL_MS", "250"), ("TALLY_PLATFORM_NAME", "Glitch"), ("TALLY_METRICS_TOKEN", "12345")];
        let config = load_with(None, &Overrides::default(), &env).unwrap();
        assert_eq!(config.settle_interval_ms, 250);
        assert_eq!((config.platform_name.as_str(), config.metrics_token.as_str()), ("Glitch", "12345"));
        let error = load_with(None, &Overrides::default(), &[("TALLY_WEBHOOK_TIMEOUT_MS", "soon")]).unwrap_err();
        assert!(error.to_string().contains("TALLY_WEBHOOK_TIMEOUT_MS"), "{error}");
        let unrelated = [("TALLY_POSTGRES_POOL_SIZE", "4"), ("TALLY_CONFIG", "x.toml"), ("TALLY_LOG", "")];
        assert_eq!(load_with(None, &Overrides::default(), &unrelated).unwrap(), Config::default());
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
