use super::*;
use proptest::prelude::*;
use std::str::FromStr;
use PricingModel::{Bulk, Flat, Package, Tiered};
use UsageType::{Unit, UnitAndVolume, Volume};

fn d(text: &str) -> Decimal {
    Decimal::from_str(text).unwrap()
}

/// A price value from `"unit_price=0.25 up_to=10 min=0.01 max=5"`.
fn value(spec: &str) -> PriceValue {
    let mut value = PriceValue::default();
    for pair in spec.split_whitespace() {
        let (name, amount) = pair.split_once('=').unwrap();
        let amount = Some(d(amount));
        match name {
            "up_to" => value.up_to = amount,
            "unit_price" => value.unit_price = amount,
            "volume_rate" => value.volume_rate = amount,
            "package_size" => value.package_size = amount,
            "min" => value.min_amount = amount,
            "max" => value.max_amount = amount,
            other => panic!("unknown price field {other}"),
        }
    }
    value
}

fn values(specs: &[&str]) -> Vec<PriceValue> {
    specs.iter().map(|spec| value(spec)).collect()
}

/// A price in USD; usage that reads a volume reads it from `tokens`.
fn price(usage_type: UsageType, model: PricingModel, specs: &[&str]) -> UsagePrice {
    UsagePrice {
        id: "price_1".to_string(),
        name: "Completions".to_string(),
        event_type: "completion".to_string(),
        usage_type,
        volume_field: usage_type.reads_volume().then(|| "tokens".to_string()),
        billable_dimensions: Vec::new(),
        pricing_model: model,
        tier_period: TierPeriod::Monthly,
        pricing: vec![AssetPricing { asset: "USD".to_string(), values: PriceValues::Plain(values(specs)) }],
    }
}

/// `"model=gpt region=*"` as a dimension map.
fn dimensions(spec: &str) -> BTreeMap<String, String> {
    spec.split_whitespace()
        .map(|pair| pair.split_once('=').unwrap())
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

/// A flat unit price in USD over `billable` dimensions, one entry per `(dimensions, unit_price)`.
fn dimensional(billable: &[&str], entries: &[(&str, &str)]) -> UsagePrice {
    let entries = entries
        .iter()
        .map(|(spec, unit_price)| DimensionalValues {
            dimensions: dimensions(spec),
            values: vec![value(&format!("unit_price={unit_price}"))],
        })
        .collect();
    UsagePrice {
        billable_dimensions: billable.iter().map(|name| name.to_string()).collect(),
        pricing: vec![AssetPricing { asset: "USD".to_string(), values: PriceValues::Dimensional(entries) }],
        ..price(Unit, Flat, &[])
    }
}

/// Event data from `"tokens=1500 premium=true note='12.5'"`: quoted values are text, `true` and
/// `false` are booleans, decimals are numbers and anything else is text.
fn data(spec: &str) -> EventData {
    spec.split_whitespace()
        .map(|pair| pair.split_once('=').unwrap())
        .map(|(name, raw)| {
            let value = if let Some(text) = raw.strip_prefix('\'').and_then(|rest| rest.strip_suffix('\'')) {
                EventValue::Text(text.to_string())
            } else if let Ok(flag) = raw.parse::<bool>() {
                EventValue::Bool(flag)
            } else if let Ok(number) = Decimal::from_str_exact(raw) {
                EventValue::Number(number)
            } else {
                EventValue::Text(raw.to_string())
            };
            (name.to_string(), value)
        })
        .collect()
}

fn usage(units: &str, volume: &str) -> Usage {
    Usage { units: d(units), volume: d(volume) }
}

/// Rates one event against a valid price and compares each asset's fee to the exact decimal.
#[track_caller]
fn check(price: &UsagePrice, event: &str, before: Usage, expected: &[&str]) {
    if let Err(problems) = price.validate() {
        panic!("the price should be valid: {}", describe_problems(&problems));
    }
    let fees = rate(price, &data(event), &before).unwrap_or_else(|error| panic!("rating `{event}`: {error}"));
    let amounts: Vec<String> = fees.iter().map(|fee| fee.amount.to_string()).collect();
    assert_eq!(amounts, expected, "event `{event}` after {before:?}");
}

#[track_caller]
fn check_error(price: &UsagePrice, event: &str, expected: RatingError) {
    assert_eq!(rate(price, &data(event), &Usage::ZERO), Err(expected), "event `{event}`");
}

/// The paths of every validation problem, in the order they were found.
fn problem_paths(price: &UsagePrice) -> Vec<String> {
    match price.validate() {
        Ok(()) => Vec::new(),
        Err(problems) => problems.into_iter().map(|problem| problem.path).collect(),
    }
}

#[test]
fn pricing_cases() {
    let unit_tiers = &["up_to=2 unit_price=1", "up_to=5 unit_price=0.5", "unit_price=0.1"];
    let volume_tiers = &["up_to=1000 volume_rate=0.002", "up_to=5000 volume_rate=0.001", "volume_rate=0.0005"];
    let zero = usage("0", "0");
    #[rustfmt::skip]
    let cases: Vec<(&str, UsagePrice, &str, Usage, &str)> = vec![
        ("unit", price(Unit, Flat, &["unit_price=0.25"]), "", zero, "0.25"),
        ("flat ignores earlier usage", price(Unit, Flat, &["unit_price=0.25"]), "", usage("900", "0"), "0.25"),
        ("volume", price(Volume, Flat, &["volume_rate=0.002"]), "tokens=1500", zero, "3"),
        ("volume from a text numeral", price(Volume, Flat, &["volume_rate=0.002"]), "tokens='12.5'", zero, "0.025"),
        ("zero volume", price(Volume, Flat, &["volume_rate=0.002"]), "tokens=0", zero, "0"),
        ("fees finer than a cent are kept", price(Volume, Flat, &["volume_rate=0.0000001"]), "tokens=3", zero, "0.0000003"),
        ("unit and volume", price(UnitAndVolume, Flat, &["unit_price=0.01 volume_rate=0.002"]), "tokens=1500", zero, "3.01"),
        ("whole packages", price(Volume, Package, &["volume_rate=0.01 package_size=1000"]), "tokens=2000", zero, "0.02"),
        ("a started package is a package", price(Volume, Package, &["volume_rate=0.01 package_size=1000"]), "tokens=2500", zero, "0.03"),
        ("a sliver starts a package", price(Volume, Package, &["volume_rate=0.01 package_size=1000"]), "tokens=0.001", zero, "0.01"),
        ("no volume, no package", price(Volume, Package, &["volume_rate=0.01 package_size=1000"]), "tokens=0", zero, "0"),
        ("fractional package size", price(Volume, Package, &["volume_rate=2 package_size=0.3"]), "tokens=0.9", zero, "6"),
        ("fractional package size rounds up", price(Volume, Package, &["volume_rate=2 package_size=0.3"]), "tokens=0.91", zero, "8"),
        ("packages ignore earlier usage", price(Volume, Package, &["volume_rate=0.01 package_size=1000"]), "tokens=1", usage("3", "999"), "0.01"),
        ("unit and volume packages", price(UnitAndVolume, Package, &["unit_price=0.05 volume_rate=0.01 package_size=1000"]), "tokens=1001", zero, "0.07"),
        ("tiered: first unit", price(Unit, Tiered, unit_tiers), "", zero, "1"),
        ("tiered: a bound is inclusive", price(Unit, Tiered, unit_tiers), "", usage("1", "0"), "1"),
        ("tiered: first unit of the second tier", price(Unit, Tiered, unit_tiers), "", usage("2", "0"), "0.5"),
        ("tiered: open-ended last tier", price(Unit, Tiered, unit_tiers), "", usage("400", "0"), "0.1"),
        ("tiered: volume inside a tier", price(Volume, Tiered, volume_tiers), "tokens=500", zero, "1"),
        ("tiered: volume up to a bound", price(Volume, Tiered, volume_tiers), "tokens=1000", zero, "2"),
        ("tiered: volume across a bound", price(Volume, Tiered, volume_tiers), "tokens=1000", usage("1", "500"), "1.5"),
        ("tiered: volume across two bounds", price(Volume, Tiered, volume_tiers), "tokens=6000", zero, "6.5"),
        ("tiered: fractional bounds", price(Volume, Tiered, &["up_to=0.5 volume_rate=10", "volume_rate=1"]), "tokens=0.75", usage("1", "0.25"), "3"),
        ("bulk: the tier reached prices the whole event", price(Volume, Bulk, volume_tiers), "tokens=1000", usage("1", "500"), "1"),
        ("bulk: a bound is inclusive", price(Volume, Bulk, volume_tiers), "tokens=1000", zero, "2"),
        ("bulk: into the open-ended tier", price(Volume, Bulk, volume_tiers), "tokens=100", usage("9", "4950"), "0.05"),
        ("bulk: zero volume is free", price(Volume, Bulk, volume_tiers), "tokens=0", usage("9", "4950"), "0"),
        ("bulk unit usage charges as tiered", price(Unit, Bulk, unit_tiers), "", usage("2", "0"), "0.5"),
        ("minimum raises a small fee", price(Unit, Flat, &["unit_price=0.001 min=0.01"]), "", zero, "0.01"),
        ("minimum applies to a zero fee", price(Volume, Flat, &["volume_rate=0.5 min=0.2"]), "tokens=0", zero, "0.2"),
        ("maximum caps a large fee", price(Volume, Flat, &["volume_rate=0.002 max=1"]), "tokens=1500", zero, "1"),
        ("a fee between the bounds stands", price(Volume, Flat, &["volume_rate=0.002 min=0.5 max=5"]), "tokens=1500", zero, "3"),
        ("minimum equal to maximum fixes the fee", price(Volume, Flat, &["volume_rate=0.002 min=0.7 max=0.7"]), "tokens=1", zero, "0.7"),
        ("bounds of the package", price(Volume, Package, &["volume_rate=1 package_size=10 max=2.5"]), "tokens=35", zero, "2.5"),
        ("tiered bounds come from the tier reached", price(Volume, Tiered, &["up_to=1000 volume_rate=0.002 max=100", "volume_rate=0.001 max=1.2"]), "tokens=2000", zero, "1.2"),
        ("bulk bounds come from the tier reached", price(Volume, Bulk, &["up_to=1000 volume_rate=0.002 min=5", "volume_rate=0.001"]), "tokens=10", zero, "5"),
        // Credyt's OpenAI example: $1.25 per million input tokens, prorated, not whole packages.
        ("a rate per package size is prorated", price(Volume, Flat, &["volume_rate=1.25 package_size=1000000"]), "tokens=2000", zero, "0.0025"),
        ("prorated volume of one token", price(Volume, Flat, &["volume_rate=1.25 package_size=1000000"]), "tokens=1", zero, "0.00000125"),
        ("a prorated quotient that does not end rounds toward zero", price(Volume, Flat, &["volume_rate=1 package_size=3"]), "tokens=1", zero, "0.333333333333"),
        ("prorated unit and volume prorates only the volume", price(UnitAndVolume, Flat, &["unit_price=0.01 volume_rate=2 package_size=1000"]), "tokens=500", zero, "1.01"),
        ("prorated tiers", price(Volume, Tiered, &["up_to=1000 volume_rate=2 package_size=1000", "volume_rate=1 package_size=1000"]), "tokens=1500", zero, "2.5"),
        ("prorated bulk", price(Volume, Bulk, &["up_to=1000 volume_rate=2 package_size=1000", "volume_rate=1 package_size=1000"]), "tokens=1500", zero, "1.5"),
        // unit_and_volume with one part: the other is zero.
        ("unit and volume with only a volume rate", price(UnitAndVolume, Flat, &["volume_rate=0.002"]), "tokens=1500", zero, "3"),
        ("unit and volume with only a unit price", price(UnitAndVolume, Flat, &["unit_price=0.01"]), "tokens=1500", zero, "0.01"),
    ];
    for (name, price, event, before, expected) in cases {
        println!("{name}");
        check(&price, event, before, &[expected]);
    }
}

#[test]
fn dimensions_pick_the_most_specific_match() {
    let price = dimensional(
        &["model", "region"],
        &[
            ("model=* region=*", "0.01"),
            ("model=gpt", "0.02"),
            ("model=gpt region=eu", "0.03"),
            ("region=us", "0.015"),
            ("model=gpt region=us", "0.025"),
        ],
    );
    let cases = [
        ("model=claude region=ap", "0.01"),
        ("model=gpt region=ap", "0.02"),
        ("model=gpt region=eu", "0.03"),
        ("model=claude region=us", "0.015"),
        ("model=gpt region=us", "0.025"),
        ("model=gpt", "0.02"),
        ("", "0.01"),
        ("model=GPT region=eu", "0.01"),
        ("model=gpt region=eu unrelated=x", "0.03"),
    ];
    for (event, expected) in cases {
        check(&price, event, Usage::ZERO, &[expected]);
    }
    let fees = rate(&price, &data("model=gpt region=ap"), &Usage::ZERO).unwrap();
    assert_eq!(fees[0].dimensions, dimensions("model=gpt"), "the fee names the entry that applied");
    let fees = rate(&price, &data("model=claude region=ap"), &Usage::ZERO).unwrap();
    assert_eq!(fees[0].dimensions, dimensions("model=* region=*"));
}

#[test]
fn dimension_values_compare_as_text() {
    let price = dimensional(
        &["premium", "size"],
        &[("premium=true", "2"), ("size=2.5", "3"), ("premium=true size=2.5", "5"), ("", "1")],
    );
    check(&price, "premium=true", Usage::ZERO, &["2"]);
    check(&price, "premium='true'", Usage::ZERO, &["2"]);
    check(&price, "premium=false", Usage::ZERO, &["1"]);
    check(&price, "size=2.50", Usage::ZERO, &["3"]);
    check(&price, "size='2.50'", Usage::ZERO, &["1"]);
}

#[test]
fn an_event_no_entry_matches_is_refused() {
    let price = dimensional(&["card"], &[("card=visa", "0.3"), ("card=amex", "0.4")]);
    check_error(
        &price,
        "card=discover",
        RatingError::NoMatchingDimension { asset: "USD".to_string(), dimensions: dimensions("card=discover") },
    );
    check_error(&price, "", RatingError::NoMatchingDimension { asset: "USD".to_string(), dimensions: BTreeMap::new() });
}

#[test]
fn every_asset_gets_a_fee_in_pricing_order() {
    let mut price = price(Volume, Tiered, &["up_to=1000 volume_rate=0.002", "volume_rate=0.001"]);
    let credits = vec![DimensionalValues {
        dimensions: BTreeMap::new(),
        values: values(&["up_to=1000 volume_rate=0.2", "volume_rate=0.1"]),
    }];
    price.pricing.push(AssetPricing { asset: "CREDITS".to_string(), values: PriceValues::Dimensional(credits) });
    check(&price, "tokens=1500", usage("4", "0"), &["2.5", "250"]);

    let fees = rate(&price, &data("tokens=1500"), &usage("4", "0")).unwrap();
    let expected_usage = usage("5", "1500");
    assert_eq!(fees[0].asset, "USD");
    assert_eq!(fees[1].asset, "CREDITS");
    assert_eq!(fees[0].usage_after, expected_usage);
    assert_eq!(fees[1].usage_after, expected_usage);
    assert_eq!(fees[0].volume, Some(d("1500")));
    assert_eq!(fees[0].volume_rate, Some(d("0.001")), "the tier reached is the one reported");
    assert_eq!((fees[0].unit_price, fees[0].package_size), (None, None));
    assert_eq!(fees[0].price_id, "price_1");
}

#[test]
fn unit_usage_counts_events_and_no_volume() {
    let fees = rate(&price(Unit, Flat, &["unit_price=0.25"]), &data("tokens=99"), &usage("7", "3")).unwrap();
    assert_eq!(fees[0].usage_after, usage("8", "3"));
    assert_eq!(fees[0].volume, None);
    assert_eq!(fees[0].unit_price, Some(d("0.25")));
    assert_eq!(fees[0].dimensions, BTreeMap::new());
}

#[test]
fn bad_volumes_are_refused() {
    let price = price(Volume, Flat, &["volume_rate=0.002"]);
    let field = || "tokens".to_string();
    check_error(&price, "other=5", RatingError::MissingVolume { field: field() });
    check_error(&price, "tokens=true", RatingError::VolumeNotNumber { field: field() });
    for text in ["'many'", "'1e3'", "'1_000'", "'+12'", "'12.'", "'.5'", "''"] {
        check_error(&price, &format!("tokens={text}"), RatingError::VolumeNotNumber { field: field() });
    }
    check_error(&price, "tokens=-1", RatingError::NegativeVolume { field: field() });
    check_error(&price, "tokens='-0.5'", RatingError::NegativeVolume { field: field() });
    check_error(
        &price,
        "tokens=0.0000000000001",
        RatingError::VolumeOutOfRange { field: field(), reason: AmountError::TooPrecise },
    );
    check_error(
        &price,
        "tokens=1000000000000000",
        RatingError::VolumeOutOfRange { field: field(), reason: AmountError::TooLarge },
    );
}

#[test]
fn fees_that_cannot_be_exact_are_refused() {
    let price = price(Volume, Flat, &["volume_rate=999999999999999"]);
    check_error(&price, "tokens=999999999999999", RatingError::TooLarge);
    let precise = "12345678.123456789012";
    assert_eq!(multiply(d(precise), d(precise)), Err(RatingError::TooLarge), "would need 40 digits");
    assert_eq!(multiply(d("0.000000000001"), d("999999999999.999999999999")), Ok(d("0.999999999999999999999999")));
    assert_eq!(add(d("99999999999999999999"), d("0.000000001")), Err(RatingError::TooLarge));
    assert_eq!(add(d("0.5"), d("-0.5")), Ok(Decimal::ZERO));
}

#[test]
fn unvalidated_prices_are_refused_not_mispriced() {
    let unsorted = price(Unit, Tiered, &["up_to=5 unit_price=1", "up_to=2 unit_price=0.5", "unit_price=0.1"]);
    assert!(matches!(rate(&unsorted, &data(""), &Usage::ZERO), Err(RatingError::InvalidPrice(_))));
    let ambiguous = dimensional(&["model", "region"], &[("model=gpt", "0.02"), ("region=us", "0.015")]);
    let problem = PriceProblem {
        path: "pricing[0].values[1].dimensions".to_string(),
        message: "matches the event as specifically as pricing[0].values[0]".to_string(),
    };
    check_error(&ambiguous, "model=gpt region=us", RatingError::InvalidPrice(vec![problem]));
    check(&price(Unit, Flat, &["unit_price=1"]), "", Usage::ZERO, &["1"]);
}

#[test]
fn validation_refuses_inconsistent_prices() {
    let without_volume_field = UsagePrice { volume_field: None, ..price(Volume, Flat, &["volume_rate=1"]) };
    let unit_with_volume_field =
        UsagePrice { volume_field: Some("tokens".to_string()), ..price(Unit, Flat, &["unit_price=1"]) };
    let no_event_type = UsagePrice { event_type: " ".to_string(), ..price(Unit, Flat, &["unit_price=1"]) };
    let no_pricing = UsagePrice { pricing: Vec::new(), ..price(Unit, Flat, &[]) };
    let mut same_asset_twice = price(Unit, Flat, &["unit_price=1"]);
    same_asset_twice
        .pricing
        .push(AssetPricing { asset: "usd".to_string(), values: PriceValues::Plain(values(&["unit_price=2"])) });
    let mut bad_asset = price(Unit, Flat, &["unit_price=1"]);
    bad_asset.pricing[0].asset = "US D".to_string();
    let twice_billable = dimensional(&["card", "card"], &[("card=visa", "1"), ("", "2")]);

    #[rustfmt::skip]
    let cases: Vec<(&str, UsagePrice, &[&str])> = vec![
        ("volume usage without a volume field", without_volume_field, &["usage_calculation.volume_field"]),
        ("unit usage with a volume field", unit_with_volume_field, &["usage_calculation.volume_field"]),
        ("empty event type", no_event_type, &["usage_calculation.event_type"]),
        ("no pricing", no_pricing, &["pricing"]),
        ("one asset priced twice", same_asset_twice, &["pricing[1].asset"]),
        ("malformed asset code", bad_asset, &["pricing[0].asset"]),
        ("no price values", price(Unit, Flat, &[]), &["pricing[0].values"]),
        ("unit usage without unit price", price(Unit, Flat, &["volume_rate=1"]), &["pricing[0].values[0].unit_price", "pricing[0].values[0].volume_rate"]),
        ("unit and volume without either part", price(UnitAndVolume, Flat, &["min=1"]), &["pricing[0].values[0].unit_price", "pricing[0].values[0].volume_rate"]),
        ("package size on unit usage", price(Unit, Flat, &["unit_price=1 package_size=10"]), &["pricing[0].values[0].package_size"]),
        ("prorated package size of zero", price(Volume, Flat, &["volume_rate=1 package_size=0"]), &["pricing[0].values[0].package_size"]),
        ("volume usage with a unit price", price(Volume, Flat, &["unit_price=1 volume_rate=1"]), &["pricing[0].values[0].unit_price"]),
        ("negative unit price", price(Unit, Flat, &["unit_price=-0.01"]), &["pricing[0].values[0].unit_price"]),
        ("negative minimum", price(Unit, Flat, &["unit_price=1 min=-1"]), &["pricing[0].values[0].min_amount"]),
        ("price too precise", price(Unit, Flat, &["unit_price=0.0000000000001"]), &["pricing[0].values[0].unit_price"]),
        ("minimum above maximum", price(Unit, Flat, &["unit_price=1 min=2 max=1"]), &["pricing[0].values[0].max_amount"]),
        ("flat with two values", price(Unit, Flat, &["unit_price=1", "unit_price=2"]), &["pricing[0].values"]),
        ("flat with a bound", price(Unit, Flat, &["unit_price=1 up_to=10"]), &["pricing[0].values[0].up_to"]),
        ("package without a size", price(Volume, Package, &["volume_rate=0.01"]), &["pricing[0].values[0].package_size"]),
        ("package of size zero", price(Volume, Package, &["volume_rate=0.01 package_size=0"]), &["pricing[0].values[0].package_size"]),
        ("package of units", price(Unit, Package, &["unit_price=1"]), &["pricing_model", "pricing[0].values[0].package_size"]),
        ("tiers not increasing", price(Unit, Tiered, &["up_to=5 unit_price=1", "up_to=5 unit_price=0.5", "unit_price=0.1"]), &["pricing[0].values[1].up_to"]),
        ("last tier bounded", price(Unit, Tiered, &["up_to=5 unit_price=1", "up_to=10 unit_price=0.5"]), &["pricing[0].values[1].up_to"]),
        ("a middle tier without a bound", price(Volume, Bulk, &["up_to=5 volume_rate=1", "volume_rate=0.5", "volume_rate=0.1"]), &["pricing[0].values[1].up_to"]),
        ("a bound of zero", price(Volume, Tiered, &["up_to=0 volume_rate=1", "volume_rate=0.5"]), &["pricing[0].values[0].up_to"]),
        ("a fractional bound on units", price(Unit, Tiered, &["up_to=2.5 unit_price=1", "unit_price=0.5"]), &["pricing[0].values[0].up_to"]),
        ("tiered unit and volume", price(UnitAndVolume, Tiered, &["up_to=5 unit_price=1 volume_rate=1", "unit_price=1 volume_rate=0.5"]), &["pricing_model"]),
        ("a billable dimension listed twice", twice_billable, &["usage_calculation.billable_dimensions[1]"]),
        ("a dimension that is not billable", dimensional(&["card"], &[("card=visa region=eu", "1")]), &["pricing[0].values[0].dimensions.region"]),
        ("an empty dimension value", dimensional(&["card"], &[("card=", "1")]), &["pricing[0].values[0].dimensions.card"]),
        ("the same dimensions twice", dimensional(&["model", "region"], &[("model=gpt", "1"), ("model=gpt region=*", "2")]), &["pricing[0].values[1].dimensions"]),
        ("an undecided overlap", dimensional(&["model", "region"], &[("model=gpt", "1"), ("region=us", "2")]), &["pricing[0].values[1].dimensions"]),
        ("no dimensional entries", dimensional(&["model"], &[]), &["pricing[0].values"]),
    ];
    for (name, price, expected) in cases {
        assert_eq!(problem_paths(&price), expected, "{name}");
    }
}

#[test]
fn validation_accepts_consistent_prices() {
    let decided_overlap =
        dimensional(&["model", "region"], &[("model=gpt", "1"), ("region=us", "2"), ("model=gpt region=us", "3")]);
    let disjoint = dimensional(&["model", "region"], &[("model=gpt", "1"), ("model=claude", "2")]);
    let valid = [
        price(Unit, Flat, &["unit_price=0"]),
        price(Volume, Tiered, &["up_to=0.5 volume_rate=1", "up_to=2.25 volume_rate=0.5", "volume_rate=0"]),
        price(Unit, Bulk, &["unit_price=1"]),
        price(UnitAndVolume, Package, &["unit_price=1 volume_rate=1 package_size=0.5 min=0 max=0"]),
        decided_overlap,
        disjoint,
    ];
    for price in valid {
        assert_eq!(problem_paths(&price), Vec::<String>::new(), "{price:?}");
    }
}

#[test]
fn validation_messages_say_what_to_do() {
    let undecided = dimensional(&["model", "region"], &[("model=gpt", "1"), ("region=us", "2")]);
    let problems = undecided.validate().unwrap_err();
    assert_eq!(
        problems[0].to_string(),
        "pricing[0].values[1].dimensions: an event with model = gpt, region = us would match this and \
         pricing[0].values[0] equally: add a price for those dimensions"
    );
    let bounded_last_tier = price(Unit, Tiered, &["up_to=5 unit_price=1"]);
    let problems = bounded_last_tier.validate().unwrap_err();
    assert_eq!(problems[0].message, "the last tier must be open-ended: remove up_to");
}

#[test]
fn keywords_parse_and_refuse_what_tally_lacks() {
    for usage_type in [Unit, Volume, UnitAndVolume] {
        assert_eq!(UsageType::parse(usage_type.as_str()), Ok(usage_type));
    }
    for model in [Flat, Tiered, Bulk, Package] {
        assert_eq!(PricingModel::parse(model.as_str()), Ok(model));
    }
    for period in [TierPeriod::Lifetime, TierPeriod::Monthly, TierPeriod::Quarterly, TierPeriod::Yearly] {
        assert_eq!(TierPeriod::parse(period.as_str()), Ok(period));
    }
    let not_supported = KeywordError::NotSupported { value: "custom".to_string() };
    assert_eq!(UsageType::parse("custom"), Err(not_supported.clone()));
    assert_eq!(TierPeriod::parse("custom"), Err(not_supported));
    assert!(matches!(PricingModel::parse("graduated"), Err(KeywordError::Unknown { .. })));
    assert_eq!(
        UsageType::parse("Unit").unwrap_err().to_string(),
        "`Unit` is not one of: unit, volume, unit_and_volume"
    );
}

#[test]
fn tier_periods_start_on_calendar_boundaries() {
    let at = |text: &str| chrono::DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc);
    let cases = [
        (TierPeriod::Monthly, "2026-02-06T13:45:00Z", Some("2026-02-01T00:00:00Z")),
        (TierPeriod::Monthly, "2026-03-01T00:00:00Z", Some("2026-03-01T00:00:00Z")),
        (TierPeriod::Monthly, "2026-03-31T23:59:59.999999Z", Some("2026-03-01T00:00:00Z")),
        (TierPeriod::Monthly, "2026-04-01T01:00:00+02:00", Some("2026-03-01T00:00:00Z")),
        (TierPeriod::Quarterly, "2026-05-20T08:00:00Z", Some("2026-04-01T00:00:00Z")),
        (TierPeriod::Quarterly, "2026-12-31T23:59:59Z", Some("2026-10-01T00:00:00Z")),
        (TierPeriod::Quarterly, "2026-03-31T23:59:59Z", Some("2026-01-01T00:00:00Z")),
        (TierPeriod::Yearly, "2026-08-15T12:00:00Z", Some("2026-01-01T00:00:00Z")),
        (TierPeriod::Lifetime, "2026-08-15T12:00:00Z", None),
    ];
    for (period, instant, expected) in cases {
        assert_eq!(period_start(period, at(instant)), expected.map(at), "{period:?} at {instant}");
    }
}

/// Tier bounds as cumulative sums of `widths`, each tier priced at the matching rate, the last
/// one open-ended.
fn tiers(usage_type: UsageType, widths: &[Decimal], rates: &[Decimal]) -> Vec<PriceValue> {
    let mut bound = Decimal::ZERO;
    let mut tiers = Vec::new();
    for (index, rate) in rates.iter().enumerate() {
        let up_to = widths.get(index).map(|width| {
            bound += *width;
            bound
        });
        let tier = match usage_type {
            Unit => PriceValue { up_to, unit_price: Some(*rate), ..PriceValue::default() },
            Volume | UnitAndVolume => PriceValue { up_to, volume_rate: Some(*rate), ..PriceValue::default() },
        };
        tiers.push(tier);
    }
    tiers
}

fn tiered_price(usage_type: UsageType, tiers: Vec<PriceValue>) -> UsagePrice {
    UsagePrice {
        pricing: vec![AssetPricing { asset: "USD".to_string(), values: PriceValues::Plain(tiers) }],
        ..price(usage_type, Tiered, &[])
    }
}

fn tokens(volume: Decimal) -> EventData {
    EventData::from([("tokens".to_string(), EventValue::Number(volume))])
}

fn decimal(mantissa: std::ops::Range<i64>, max_scale: u32) -> impl Strategy<Value = Decimal> {
    (mantissa, 0..=max_scale).prop_map(|(mantissa, scale)| Decimal::new(mantissa, scale))
}

/// Between one and five tiers: the widths of all but the last, and a rate for each.
fn tier_shape(width: BoxedStrategy<Decimal>) -> impl Strategy<Value = (Vec<Decimal>, Vec<Decimal>)> {
    prop::collection::vec(width, 0..5).prop_flat_map(|widths| {
        let rates = prop::collection::vec(decimal(0..100_000, 6), widths.len() + 1);
        (Just(widths), rates)
    })
}

proptest! {
    #[test]
    fn graduated_volume_fees_are_additive(
        (widths, rates) in tier_shape(decimal(1..100_000, 2).boxed()),
        volumes in prop::collection::vec(decimal(0..100_000, 3), 1..20),
        start in decimal(0..100_000, 2),
    ) {
        let price = tiered_price(Volume, tiers(Volume, &widths, &rates));
        prop_assert!(price.validate().is_ok());
        let before = Usage { units: Decimal::ZERO, volume: start };
        let mut counters = before;
        let mut charged = Decimal::ZERO;
        for volume in &volumes {
            let fee = rate(&price, &tokens(*volume), &counters).unwrap().remove(0);
            prop_assert!(fee.amount >= Decimal::ZERO);
            charged += fee.amount;
            counters = fee.usage_after;
        }
        let total: Decimal = volumes.iter().sum();
        let whole = rate(&price, &tokens(total), &before).unwrap().remove(0);
        prop_assert_eq!(charged, whole.amount);
        prop_assert_eq!(counters.volume, start + total);
        prop_assert_eq!(counters.units, Decimal::from(volumes.len()));
    }

    #[test]
    fn graduated_unit_fees_are_additive(
        (widths, rates) in tier_shape(decimal(1..20, 0).boxed()),
        events in 1usize..80,
        start in 0i64..50,
    ) {
        let tiers = tiers(Unit, &widths, &rates);
        let price = tiered_price(Unit, tiers.clone());
        prop_assert!(price.validate().is_ok());
        let start = Decimal::from(start);
        let mut counters = Usage { units: start, volume: Decimal::ZERO };
        let mut charged = Decimal::ZERO;
        for _ in 0..events {
            let fee = rate(&price, &EventData::new(), &counters).unwrap().remove(0);
            charged += fee.amount;
            counters = fee.usage_after;
        }
        let whole = graduated_amount(Unit, &tiers, start, start + Decimal::from(events)).unwrap();
        prop_assert_eq!(charged, whole);
        prop_assert_eq!(counters.units, start + Decimal::from(events));
    }
}
