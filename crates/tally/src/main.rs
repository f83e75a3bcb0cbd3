//! `tally`: the server and its administration commands.

use anyhow::{bail, Context};
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;
use tally::config::{redact_database_url, Config, LogFormat, Overrides};
use tally_core::Mode;

#[derive(Parser)]
#[command(name = "tally", version, about = "Tally: real-time usage billing, Credyt-compatible.")]
struct Cli {
    /// Config file (default: ./tally.toml when it exists).
    #[arg(long, env = "TALLY_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Database URL: sqlite://PATH or postgres://USER@HOST:PORT/DB. DATABASE_URL is read too,
    /// below TALLY_DATABASE_URL.
    #[arg(long = "database", env = "TALLY_DATABASE_URL", global = true)]
    database_url: Option<String>,
    /// Log lines on stderr: text or json.
    #[arg(long = "log-format", env = "TALLY_LOG_FORMAT", global = true, value_parser = ["text", "json"])]
    log_format: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the API server (applies migrations first).
    Serve {
        /// Address to listen on.
        #[arg(long, env = "TALLY_LISTEN")]
        listen: Option<String>,
    },
    /// Apply database migrations and exit.
    Migrate {
        /// Only list every migration and whether the database applied it (changes nothing).
        /// Exits 1 unless every migration is applied unchanged.
        #[arg(long)]
        status: bool,
    },
    /// Manage API keys.
    #[command(subcommand, name = "api-keys")]
    ApiKeys(ApiKeyCommand),
    /// Check the books.
    #[command(subcommand)]
    Ledger(LedgerCommand),
    /// Print the commented default config file.
    Config,
    /// Measure event ingestion over HTTP against an in-process server. Uses a fresh temporary
    /// SQLite database unless --database is given on the command line.
    Bench(tally::bench::BenchArgs),
    /// Fill a database with many test-mode customers and usage events through the store's own
    /// operations, fast, for measuring at size (docs/benchmarks.md). Only a database named by
    /// --database on the command line.
    Seed(tally::seed::SeedArgs),
    /// Fill a new, empty database with a week of test-mode data (an asset, a product,
    /// customers with top-ups and usage) and print a test API key and a billing-portal link.
    Demo {
        /// The address `tally serve` will listen on, which the printed links point at (unless
        /// public_url is set).
        #[arg(long, env = "TALLY_LISTEN")]
        listen: Option<String>,
    },
    /// Copy the SQLite database into one file, consistently, even while servers write to it.
    /// For PostgreSQL use pg_dump (docs/operations.md).
    Backup {
        /// The backup file to write.
        path: PathBuf,
        /// Replace the file at PATH if there is one.
        #[arg(long)]
        force: bool,
    },
    /// Copy a backup made by `tally backup` into the configured SQLite database. Stop the
    /// servers that use it first.
    Restore {
        /// The backup file to read.
        path: PathBuf,
        /// Replace the configured database when it is not empty.
        #[arg(long)]
        force: bool,
    },
    /// Copy every row of the SQLite database (--database) into a new, empty PostgreSQL
    /// database, in one transaction: the move from the embedded store to PostgreSQL. Stop the
    /// servers first; rows written after the copy starts are not copied.
    #[command(name = "copy-to-postgres")]
    CopyToPostgres {
        /// The PostgreSQL database to fill: postgres://USER@HOST:PORT/DB (made ready by
        /// migrating it when it is new; refused when it holds data).
        url: String,
    },
    /// Write usage events or wallet transactions of one mode as CSV or JSON Lines.
    Export(tally::export::ExportArgs),
    /// Finance reports from the ledger.
    #[command(subcommand)]
    Report(ReportCommand),
}

#[derive(Subcommand)]
enum ReportCommand {
    /// Deferred revenue, recognition, breakage and refunds per asset, currency and period
    /// (as GET /reports/revenue).
    Revenue(tally::report::RevenueArgs),
}

#[derive(Subcommand)]
enum ApiKeyCommand {
    /// Create a key and print it alone on stdout. It is shown only this once.
    Create {
        #[arg(long, value_parser = ["test", "live"])]
        mode: String,
        #[arg(long)]
        name: Option<String>,
    },
    /// List keys (never their secrets).
    List,
    /// Revoke a key by its id (ak_...).
    Revoke { id: String },
}

#[derive(Subcommand)]
enum LedgerCommand {
    /// Recompute every balance and grant from the ledger; exit 1 on any mismatch.
    Verify,
}

fn main() -> anyhow::Result<()> {
    let matches = Cli::command().get_matches();
    // The bench writes a lot: it uses a database only when named on its command line, never
    // one that the environment or a config file point at.
    let database_on_command_line = matches.value_source("database_url") == Some(ValueSource::CommandLine);
    let cli = Cli::from_arg_matches(&matches)?;
    let listen = match &cli.command {
        Command::Serve { listen } | Command::Demo { listen } => listen.clone(),
        _ => None,
    };
    let overrides = Overrides { listen, database_url: cli.database_url.clone(), log_format: cli.log_format.clone() };
    let config = Config::load(cli.config.as_deref(), &overrides)?;
    // The bench's server would log each of its many thousand requests, the demo's its few
    // hundred: they keep only warnings.
    let request_log = if matches!(cli.command, Command::Bench(_) | Command::Demo { .. } | Command::Seed(_)) {
        ",tally_http::telemetry=warn"
    } else {
        ""
    };
    init_logging(&config, request_log)?;
    match cli.command {
        Command::Serve { .. } => serve(&config),
        Command::Migrate { status: true } => {
            let (lines, current) = tally::migration_status(&config.database_url)?;
            for line in lines {
                println!("{line}");
            }
            if !current {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Migrate { status: false } => {
            let store = tally::open_store(&config.database_url)?;
            drop(store);
            eprintln!("migrations are up to date");
            Ok(())
        }
        // Administrative commands work on an existing Tally database only: a mistyped path
        // must not leave an empty new database behind (and a key in it nobody reads).
        Command::ApiKeys(command) => api_keys(&config, command),
        Command::Ledger(LedgerCommand::Verify) => verify(&config),
        Command::Config => {
            print!("{}", tally::config::DEFAULT_FILE);
            Ok(())
        }
        Command::Demo { .. } => demo(&config),
        Command::Backup { path, force } => {
            let copied = tally::backup::backup(&config.database_url, &path, force)?;
            eprintln!(
                "backed up {} to {} ({} pages, {} bytes) in {:.1?}",
                redact_database_url(&config.database_url),
                path.display(),
                copied.pages,
                copied.bytes,
                copied.elapsed
            );
            Ok(())
        }
        Command::Restore { path, force } => restore(&config, &path, force),
        Command::CopyToPostgres { url } => {
            let report = tally::copy::copy_to_postgres(&config.database_url, &url, &mut std::io::stderr())?;
            eprintln!(
                "copied {} rows of {} tables from {} to {} in {:.1?}; check them there with `tally ledger verify --database ...`",
                report.rows(),
                report.tables.len(),
                redact_database_url(&config.database_url),
                redact_database_url(&url),
                report.elapsed
            );
            Ok(())
        }
        Command::Export(args) => {
            let store = tally::open_existing_store(&config.database_url)?;
            if let Some(rows) = tally::export::run(&store, &args)? {
                eprintln!("exported {rows} rows");
            }
            Ok(())
        }
        Command::Report(ReportCommand::Revenue(args)) => {
            let store = tally::open_existing_store(&config.database_url)?;
            tally::report::run(&store, &args, &mut std::io::stdout().lock())
        }
        Command::Seed(args) => {
            let Some(database_url) = cli.database_url.as_deref().filter(|_| database_on_command_line) else {
                bail!("tally seed writes millions of rows: name the database with --database on the command line");
            };
            tally::seed::run(&args, database_url)?;
            Ok(())
        }
        Command::Bench(args) => {
            let database_url = cli.database_url.as_deref().filter(|_| database_on_command_line);
            let settle_interval = Duration::from_millis(config.settle_interval_ms.max(10));
            let ingest_rounds = config.ingest_rounds.min(1024) as usize;
            if !tally::bench::run(&args, database_url, settle_interval, ingest_rounds)? {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

/// Log lines go to stderr, as text (coloured only on a terminal, and never with NO_COLOR set)
/// or as one JSON object per line. A request's lines carry its span: method, route, request id.
fn init_logging(config: &Config, extra_directives: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(format!("{}{extra_directives}", config.log))
        .context("invalid log filter")?;
    let subscriber = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match config.log_format()? {
        LogFormat::Text => {
            let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            subscriber.with_ansi(colour).init();
        }
        LogFormat::Json => subscriber.json().flatten_event(true).with_span_list(false).with_ansi(false).init(),
    }
    Ok(())
}

fn serve(config: &Config) -> anyhow::Result<()> {
    let stripe = config.stripe()?;
    let store = tally::open_store(&config.database_url)?;
    let http_config = tally_http::HttpConfig {
        platform_name: config.platform_name.clone(),
        settle_interval: Duration::from_millis(config.settle_interval_ms.max(10)),
        ingest_rounds: config.ingest_rounds.min(1024) as usize,
        public_url: Some(config.public_url.clone()).filter(|url| !url.is_empty()),
        top_up_expiry: Duration::from_secs(config.top_up_expiry_seconds.max(60)),
        holds: config.hold_limits()?,
        webhooks: tally_http::WebhookConfig {
            interval: Duration::from_millis(config.webhook_interval_ms.max(10)),
            timeout: Duration::from_millis(config.webhook_timeout_ms.max(100)),
            retention: Duration::from_secs(config.webhook_retention_days.max(1) * 24 * 60 * 60),
            ..tally_http::WebhookConfig::default()
        },
        portal_logo_url: Some(config.portal_logo_url.clone()).filter(|url| !url.is_empty()),
        portal_accent_color: Some(config.portal_accent_color.clone()).filter(|color| !color.is_empty()),
        portal_frame_ancestors: config.portal_frame_ancestors()?,
        portal_home_url: Some(config.portal_home_url.trim().to_owned()).filter(|url| !url.is_empty()),
        clock: tally_http::clock::Clock::default(),
        metrics_token: config.metrics_token(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        tracing::info!(address = %listener.local_addr()?, database = %redact_database_url(&config.database_url), "tally is serving");
        let mut state = tally_http::AppState::new(store, http_config);
        match stripe {
            Some(stripe) => {
                tracing::info!(api = %stripe.api_base, "live-mode payments go through Stripe");
                state = state.with_stripe(tally_http::payments::stripe::StripeProvider::new(stripe));
            }
            None => tracing::info!("no stripe_secret_key: live-mode top-ups are unavailable"),
        }
        tally_http::serve(listener, state, shutdown_signal()).await?;
        tracing::info!("stopped");
        anyhow::Ok(())
    })
}

/// Completes on SIGINT or SIGTERM; in-flight requests then finish before the server exits.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    tracing::info!("shutting down: finishing in-flight requests");
}

fn api_keys(config: &Config, command: ApiKeyCommand) -> anyhow::Result<()> {
    let store = tally::open_existing_store(&config.database_url)?;
    let now = chrono::Utc::now();
    match command {
        ApiKeyCommand::Create { mode, name } => {
            let mode = Mode::parse(&mode).context("mode must be test or live")?;
            let (record, secret) =
                store.write(|conn| tally_store::repo::api_keys::create(conn, mode, name.as_deref(), now))?;
            eprintln!("created {} key {} (shown once; Tally keeps only its hash)", mode.as_str(), record.id);
            println!("{secret}");
        }
        ApiKeyCommand::List => {
            let keys = store.read(tally_store::repo::api_keys::list)?;
            println!("{:<32} {:<5} {:<18} {:<28} {:<28} NAME", "ID", "MODE", "PREFIX", "CREATED", "REVOKED");
            for key in keys {
                println!(
                    "{:<32} {:<5} {:<18} {:<28} {:<28} {}",
                    key.id,
                    key.mode.as_str(),
                    key.key_prefix,
                    tally_http::types::format_timestamp(key.created_at),
                    key.revoked_at.map(tally_http::types::format_timestamp).unwrap_or_else(|| "-".into()),
                    key.name.unwrap_or_default()
                );
            }
        }
        ApiKeyCommand::Revoke { id } => {
            if !store.write(|conn| tally_store::repo::api_keys::revoke(conn, &id, now))? {
                bail!("no API key with id {id}");
            }
            eprintln!("revoked {id}");
        }
    }
    Ok(())
}

fn verify(config: &Config) -> anyhow::Result<()> {
    let store = tally::open_existing_store(&config.database_url)?;
    let report = store.read_pair(tally_store::ops::ledger::verify_on_two)?;
    println!(
        "checked {} entries ({} postings), {} accounts, {} grants, {} transactions, {} events ({} fees), {} top-ups, {} rollup rows, {} holds",
        report.entries,
        report.postings,
        report.accounts,
        report.grants,
        report.transactions,
        report.events,
        report.fees,
        report.top_ups,
        report.rollups,
        report.holds
    );
    for ((mode, asset, account), balance) in &report.system_balances {
        println!("system:{account} {asset} ({mode}): {balance}");
    }
    if report.is_clean() {
        println!(
            "ledger OK: every entry balances; every balance, grant, transaction, event fee and top-up agrees with the ledger"
        );
        return Ok(());
    }
    for problem in &report.problems {
        println!("MISMATCH {problem}");
    }
    if report.unlisted_problems > 0 {
        println!("... and {} more mismatches", report.unlisted_problems);
    }
    std::process::exit(1);
}

fn demo(config: &Config) -> anyhow::Result<()> {
    let shown = redact_database_url(&config.database_url);
    let store = tally::open_store(&config.database_url)?;
    let public = tally::demo::public_base(&config.public_url, &config.listen);
    let demo = tally::demo::run(store.clone(), &shown, &public, &config.platform_name)?;
    let defaults = Config::default();
    let mut serve_flags = String::new();
    if config.database_url != defaults.database_url {
        serve_flags.push_str(&format!(" --database {shown}"));
    }
    if config.listen != defaults.listen {
        serve_flags.push_str(&format!(" --listen {}", config.listen));
    }
    println!("Made a week of test-mode data in {shown}:");
    println!(
        "  asset IMG (image credits at 0.10 USD each), product glitch_images_std (1 IMG per image_generated event)"
    );
    println!(
        "  {} customers, subscribed and topped up through the test payment provider, with {} usage events over 6 days:",
        demo.customers.len(),
        demo.events
    );
    for (id, name, external_id, balance) in &demo.customers {
        println!("    {id}  {name:<15} {external_id:<10} balance {balance}");
    }
    println!();
    println!("Test API key (shown once; Tally keeps only its hash):");
    println!("  {}", demo.key);
    println!();
    println!("Start the server:");
    println!("  tally serve{serve_flags}");
    println!("Then open {}'s billing portal within 10 minutes (the link works once):", demo.portal_customer);
    println!("  {}", demo.portal_link);
    println!("And ask the API:");
    println!("  curl -s {}/customers -H \"X-CREDYT-API-KEY: {}\"", public_of(&demo.portal_link), demo.key);
    let week_ago = (chrono::Utc::now() - chrono::Duration::days(7)).format("%Y-%m-%d");
    let today = chrono::Utc::now().format("%Y-%m-%d");
    println!();
    println!("Deferred revenue, recognised usage and breakage of the credits bought (also GET /reports/revenue):");
    let report = tally::report::RevenueArgs {
        mode: "test".into(),
        from: week_ago.to_string(),
        to: today.to_string(),
        group_by: tally::report::GroupBy::Month,
        currency: None,
        asset: None,
        format: tally::report::ReportFormat::Table,
    };
    tally::report::run(&store, &report, &mut std::io::stdout().lock())?;
    let database_flag =
        if config.database_url != defaults.database_url { format!(" --database {shown}") } else { String::new() };
    println!("By day: tally report revenue{database_flag} --mode test --from {week_ago} --to {today} --group-by day");
    Ok(())
}

/// The scheme and host of a link Tally made.
fn public_of(link: &str) -> &str {
    link.split_once("/portal/").map_or(link, |(base, _)| base)
}

fn restore(config: &Config, path: &std::path::Path, force: bool) -> anyhow::Result<()> {
    let copied = tally::backup::restore(&config.database_url, path, force)?;
    let shown = redact_database_url(&config.database_url);
    eprintln!(
        "restored {} into {shown} ({} pages, {} bytes) in {:.1?}",
        path.display(),
        copied.pages,
        copied.bytes,
        copied.elapsed
    );
    let store = tally_store::Store::open(&tally_store::DatabaseUrl::parse(&config.database_url)?)?;
    let counts = store.read(tally_store::repo::export::row_counts)?;
    let counts: Vec<String> = counts.iter().map(|(table, count)| format!("{table} {count}")).collect();
    eprintln!("rows: {}", counts.join(", "));
    eprintln!("check it with `tally ledger verify`; `tally serve` applies any migration newer than the backup");
    Ok(())
}
