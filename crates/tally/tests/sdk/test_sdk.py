"""Compatibility with the official Python SDK, credyt-api==0.2.0, against a live Tally server.

Run by crates/tally/tests/api/sdk.rs, which starts the server and passes TALLY_URL, TALLY_KEY
(a test-mode key) and TALLY_LIVE_KEY. Every call goes through the SDK's own operations and
models, so a field name, status code or response shape the SDK cannot read fails here.

The SDK types some amounts as `int` (a grant's `available`) and sends Decimals as floats, so
exact amounts are asserted on the response's raw JSON, parsed with Decimal, as well.
"""

import datetime
import json
import os
import time
import urllib.request
import uuid
from decimal import Decimal

import pytest
from corehttp.credentials import ServiceKeyCredential
from corehttp.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
)
from credytapi import CredytApiClient, models

URL = os.environ["TALLY_URL"]
TEST_KEY = os.environ["TALLY_KEY"]
LIVE_KEY = os.environ["TALLY_LIVE_KEY"]

# The seed's asset (shared/seeds/000), exactly as written there.
VIDGENMIN = {
    "code": "VIDGENMIN",
    "name": "Video Generation Minutes",
    "precision": 2,
    "symbol": "⏰",
    "label": "MIN",
    "rates": [{"source": "USD", "rate": 0.1}],
}


def make_client(key):
    # No retries: a 5xx must surface at once rather than be retried into a timeout.
    return CredytApiClient(endpoint=URL, credential=ServiceKeyCredential(key), retry_total=0)


def exact(text):
    """Parses JSON keeping every fractional number exact."""
    return json.loads(text, parse_float=Decimal)


def with_raw(operation, *args, **kwargs):
    """Calls an SDK operation and returns (what the SDK made of the response, the response's
    exact JSON or None when it has no body, its headers)."""
    captured = {}

    def keep(pipeline_response, deserialized, _headers):
        response = pipeline_response.http_response
        text = response.text()
        captured["json"] = exact(text) if text else None
        captured["headers"] = response.headers
        return deserialized

    result = operation(*args, cls=keep, **kwargs)
    return result, captured["json"], captured["headers"]


def get_json(path, key=TEST_KEY):
    """A GET outside the SDK, for endpoints it has no operation for."""
    request = urllib.request.Request(URL + path, headers={"X-CREDYT-API-KEY": key})
    with urllib.request.urlopen(request, timeout=30) as response:
        return exact(response.read().decode())


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def client():
    with make_client(TEST_KEY) as sdk:
        yield sdk


@pytest.fixture(scope="session")
def live_client():
    with make_client(LIVE_KEY) as sdk:
        yield sdk


@pytest.fixture(scope="session")
def wallet(client):
    return client.wallets.customer_wallet_ops


@pytest.fixture(scope="session")
def seed_asset(client):
    """Creates the seed's VIDGENMIN asset once for the session."""
    return client.assets.create(VIDGENMIN)


@pytest.fixture
def customer_id(client):
    return client.customers.create({"name": unique("customer")}).id


def fund(wallet, customer, amount, asset="USD", reason="external_topup", **extra):
    body = {"transaction_id": unique("fund"), "asset": asset, "amount": amount, "reason": reason}
    body.update(extra)
    return wallet.create_adjustment(customer, body)


# Accounts


def test_account_context_names_the_key_environment(client, live_client):
    test_context = client.accounts.get_context()
    assert isinstance(test_context, models.AccountContext)
    assert test_context.environment == "test"
    assert test_context.account_id.startswith("acc_")
    live_context = live_client.accounts.get_context()
    assert live_context.environment == "live"
    assert live_context.account_id == test_context.account_id


# Assets, rates and quotes


def test_seed_asset_is_created_and_read_back_with_its_rates(client, seed_asset):
    assert seed_asset.code == "VIDGENMIN"
    assert isinstance(seed_asset.created_at, datetime.datetime)

    asset, raw, _ = with_raw(client.assets.get, "VIDGENMIN")
    assert isinstance(asset, models.GetAssetResponse)
    assert (asset.code, asset.name, asset.precision, asset.label, asset.symbol) == (
        "VIDGENMIN",
        "Video Generation Minutes",
        2,
        "MIN",
        "⏰",
    )
    assert asset.created_at == seed_asset.created_at
    [usd] = asset.rates
    assert usd.source == "USD"
    [current] = usd.schedule
    assert current.rate == Decimal("0.1")
    assert current.inverse_rate == Decimal("10")
    assert isinstance(current.valid_from, datetime.datetime)
    assert current.valid_to is None
    # The documentation's shape (seed 000) names the schedule `rates`: both are served.
    assert raw["rates"][0]["rates"] == raw["rates"][0]["schedule"]
    assert raw["rates"][0]["rates"][0]["rate"] == Decimal("0.1")
    assert raw["rates"][0]["rates"][0]["inverse_rate"] == 10


def test_seed_quote_of_10_usd_gives_100(client, seed_asset):
    quote, raw, _ = with_raw(client.assets.quote, "VIDGENMIN", {"source": "USD", "amount": 10})
    assert isinstance(quote, models.QuoteAssetResponse)
    assert quote.source == "USD"
    assert quote.source_amount == 10
    assert quote.destination == "VIDGENMIN"
    assert quote.destination_amount == 100
    assert quote.rate == Decimal("0.1")
    assert quote.inverse_rate == 10
    assert (raw["source_amount"], raw["destination_amount"], raw["rate"], raw["inverse_rate"]) == (
        10,
        100,
        Decimal("0.1"),
        10,
    )


def test_asset_list_pages_with_the_documented_defaults(client, seed_asset):
    client.assets.create(models.CreateAssetRequest(code=unique("PAGE").upper().replace("-", ""), name="Paging"))
    page = client.assets.list()
    assert isinstance(page, models.PageListAssetsItem)
    assert (page.limit, page.offset) == (20, 0)
    assert page.total_count >= 2
    assert "VIDGENMIN" in [item.code for item in page.items_property]
    first = client.assets.list(limit=1)
    second = client.assets.list(limit=1, offset=1)
    assert (first.limit, len(first.items_property), second.offset) == (1, 1, 1)
    assert first.items_property[0].code != second.items_property[0].code


def test_asset_list_is_sorted_by_code(client):
    for prefix in ("ZZ", "AA"):
        client.assets.create({"code": prefix + uuid.uuid4().hex[:8].upper(), "name": "Sorting"})
    codes = [item.code for item in client.assets.list(limit=100).items_property]
    assert codes == sorted(codes)


def test_added_rate_schedules_a_change_and_quotes_follow_it(client):
    code = "TOK" + uuid.uuid4().hex[:8].upper()
    created = client.assets.create(
        models.CreateAssetRequest(
            code=code,
            name="Tokens",
            precision=2,
            rates=[models.StartingExchangeRate(source="USD", inverse_rate=Decimal(10))],
        )
    )
    assert created.code == code
    change_at = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
    added = client.assets.add_rate(
        code, models.AddAssetRateRequest(source="USD", rate=Decimal("0.15"), valid_from=change_at)
    )
    assert added is None

    [usd] = client.assets.get(code).rates
    newest, previous = usd.schedule
    assert newest.rate == Decimal("0.15")
    assert abs(newest.valid_from - change_at) < datetime.timedelta(milliseconds=1)
    assert previous.rate == Decimal("0.1")
    assert previous.valid_to == newest.valid_from

    now_quote = client.assets.quote(code, models.QuoteAssetRequest(source="USD", amount=Decimal(10)))
    assert now_quote.destination_amount == 100
    later = change_at + datetime.timedelta(minutes=1)
    later_quote, raw, _ = with_raw(
        client.assets.quote, code, models.QuoteAssetRequest(source="USD", amount=Decimal(10), exchange_at=later)
    )
    # Rounded down to the asset's precision: a customer never gets more than was paid for.
    assert raw["destination_amount"] == Decimal("66.66")
    assert later_quote.destination_amount == Decimal("66.66")
    assert later_quote.rate == Decimal("0.15")


# Customers


def test_customers_are_created_read_listed_by_filter_and_updated(client):
    external_id = unique("ext")
    email = f"{external_id}@example.com"
    created = client.customers.create(
        models.CreateCustomerRequest(name="Ada Lovelace", external_id=external_id, email=email, metadata={"plan": "pro"})
    )
    assert isinstance(created, models.CreateCustomerResponse)
    assert created.id.startswith("cust_")
    assert created.subscriptions == []

    fetched = client.customers.get(created.id)
    assert isinstance(fetched, models.GetCustomerResponse)
    assert (fetched.name, fetched.external_id, fetched.email) == ("Ada Lovelace", external_id, email)
    assert fetched.metadata == {"plan": "pro"}
    assert isinstance(fetched.created_at, datetime.datetime)

    for filters in ({"external_id": external_id}, {"email": email.upper()}, {"customer_id": created.id}):
        page = client.customers.list(**filters)
        assert isinstance(page, models.PageCustomerSummary)
        assert [item.id for item in page.items_property] == [created.id], filters
        assert page.total_count == 1
    assert client.customers.list(external_id=unique("nobody")).total_count == 0

    assert client.customers.update(created.id, models.UpdateCustomerRequest(name="Ada King")) is None
    assert client.customers.get(created.id).name == "Ada King"
    assert client.customers.get(created.id).external_id == external_id

    with pytest.raises(ResourceExistsError) as conflict:
        client.customers.create({"name": "Ada again", "external_id": external_id})
    assert conflict.value.status_code == 409


# Wallets: adjustments, charges, transactions and grants


def test_top_up_keeps_exact_decimals_and_a_replay_moves_nothing(wallet, customer_id):
    body = {"transaction_id": unique("topup"), "asset": "USD", "amount": 14.566678, "reason": "external_topup"}
    created, raw, headers = with_raw(wallet.create_adjustment, customer_id, body)
    assert isinstance(created, models.CreateAdjustmentResponse)
    assert created.id == body["transaction_id"]
    assert isinstance(created.created_at, datetime.datetime)
    assert headers.get("idempotent-replayed") == "false"

    replay, replay_raw, replay_headers = with_raw(wallet.create_adjustment, customer_id, body)
    assert (replay.id, replay.created_at) == (created.id, created.created_at)
    assert replay_raw == raw
    assert replay_headers.get("idempotent-replayed") == "true"

    account, account_raw, _ = with_raw(wallet.get_account, customer_id, "default:usd")
    assert isinstance(account, models.GetAccountDetailsResponse)
    assert (account.id, account.name, account.asset) == ("default:USD", "default", "USD")
    assert account_raw["available"] == Decimal("14.566678")
    assert account.available == Decimal("14.566678")
    assert (account.pending_in, account.pending_out) == (0, 0)

    whole = wallet.get_customer_wallet(customer_id)
    assert isinstance(whole, models.GetWalletResponse)
    assert [(a.id, a.available) for a in whole.accounts] == [("default:USD", Decimal("14.566678"))]


def test_same_transaction_id_with_another_body_is_a_conflict(wallet, customer_id):
    body = {"transaction_id": unique("topup"), "asset": "USD", "amount": 5, "reason": "external_topup"}
    wallet.create_adjustment(customer_id, body)
    with pytest.raises(ResourceExistsError) as conflict:
        wallet.create_adjustment(customer_id, dict(body, amount=6))
    assert conflict.value.status_code == 409
    assert wallet.get_account(customer_id, "default:USD").available == 5


def test_debit_adjustment_draws_the_balance_down(wallet, customer_id):
    fund(wallet, customer_id, 20)
    debit = models.CreateAdjustmentRequest(
        transaction_id=unique("debit"),
        asset="USD",
        amount=Decimal("-7.25"),
        reason=models.AdjustmentReason.OTHER,
        description="manual correction",
    )
    created = wallet.create_adjustment(customer_id, debit)
    account, raw, _ = with_raw(wallet.get_account, customer_id, "default:USD")
    assert raw["available"] == Decimal("12.75")

    transaction, raw_transaction, _ = with_raw(wallet.get_transaction, customer_id, created.id)
    assert isinstance(transaction, models.GetTransactionResponse)
    assert transaction.type == models.TransactionType.ADJUSTMENT
    assert (transaction.account_id, transaction.asset) == ("default:USD", "USD")
    assert raw_transaction["amount"] == Decimal("-7.25")
    assert transaction.description == "manual correction"


def test_charges_by_amount_and_by_units_are_recorded_as_fees(wallet, customer_id):
    fund(wallet, customer_id, 10)
    by_amount = {"transaction_id": unique("charge"), "asset": "USD", "amount": 1.005, "subject": "render"}
    charged, _, headers = with_raw(wallet.create_charge, customer_id, by_amount)
    assert headers.get("idempotent-replayed") == "false"
    _, _, replay_headers = with_raw(wallet.create_charge, customer_id, by_amount)
    assert replay_headers.get("idempotent-replayed") == "true"

    by_units = models.CreateChargeRequest(
        transaction_id=unique("charge"), asset="USD", input_units=3, unit_price=2, amount=Decimal(6)
    )
    wallet.create_charge(customer_id, by_units)

    _, raw, _ = with_raw(wallet.get_account, customer_id, "default:USD")
    assert raw["available"] == Decimal("2.995")

    transaction, raw_transaction, _ = with_raw(wallet.get_transaction, customer_id, by_amount["transaction_id"])
    assert transaction.type == models.TransactionType.FEE
    assert raw_transaction["amount"] == Decimal("-1.005")
    assert isinstance(transaction.created_at, datetime.datetime)
    units_transaction = wallet.get_transaction(customer_id, by_units.transaction_id)
    assert units_transaction.amount == -6

    with pytest.raises(HttpResponseError) as invalid:
        wallet.create_charge(
            customer_id,
            models.CreateChargeRequest(
                transaction_id=unique("charge"), asset="USD", input_units=3, unit_price=2, amount=Decimal(7)
            ),
        )
    assert invalid.value.status_code == 422
    assert isinstance(invalid.value.model, models.ValidationProblem)
    assert "amount" in invalid.value.model.errors

    with pytest.raises(HttpResponseError) as negative:
        wallet.create_charge(customer_id, {"transaction_id": unique("charge"), "asset": "USD", "amount": -1})
    assert negative.value.model.errors == {"amount": ["must be greater than zero"]}
    assert wallet.get_account(customer_id, "default:USD").available == Decimal("2.995")


def test_grants_show_purpose_expiry_and_what_remains(wallet, customer_id):
    fund(wallet, customer_id, Decimal("10.5"))
    fund(wallet, customer_id, 3, reason=models.AdjustmentReason.GIFT)
    tomorrow = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=1)
    wallet.create_adjustment(
        customer_id,
        models.CreateAdjustmentRequest(
            transaction_id=unique("later"), asset="USD", amount=Decimal(4), reason="gift", effective_at=tomorrow
        ),
    )
    # Burn order: the promotion grant first, then the paid one.
    wallet.create_charge(customer_id, {"transaction_id": unique("charge"), "asset": "USD", "amount": 3.25})

    account = wallet.get_account(customer_id, "default:USD")
    assert (account.available, account.pending_in) == (Decimal("10.25"), 4)

    grants, raw, _ = with_raw(wallet.get_credit_grants, customer_id, "default:USD")
    assert isinstance(grants, models.PageCreditGrantItem)
    assert (grants.total_count, grants.limit, grants.offset) == (3, 20, 0)
    by_purpose = {}
    for item, raw_item in zip(grants.items_property, raw["items"]):
        assert isinstance(item, models.CreditGrantItem)
        assert item.id.startswith("grt_") and item.id == raw_item["id"]
        assert isinstance(item.effective_at, datetime.datetime)
        assert isinstance(item.created_at, datetime.datetime)
        by_purpose.setdefault(item.purpose, []).append((item, raw_item))

    [(paid, paid_raw)] = by_purpose["paid"]
    # The SDK types `available` as int, which truncates 10.25 to 10: the JSON carries it exactly.
    assert paid_raw["available"] == Decimal("10.25")
    assert paid.available == 10
    # A paid grant expires after one year unless told otherwise; a gift never, unless told.
    assert datetime.timedelta(days=365) <= paid.expires_at - paid.effective_at <= datetime.timedelta(days=366)
    promotions = sorted(by_purpose["promotion"], key=lambda pair: pair[0].effective_at)
    assert [raw_item["available"] for _, raw_item in promotions] == [0, 0]
    assert all(item.expires_at is None for item, _ in promotions)
    assert promotions[1][1]["pending_in"] == 4

    paid_only = wallet.get_credit_grants(customer_id, "default:USD", purpose="paid")
    assert [item.id for item in paid_only.items_property] == [paid.id]
    effective_later = wallet.get_credit_grants(
        customer_id, "default:USD", effective_from=tomorrow - datetime.timedelta(seconds=1)
    )
    assert effective_later.total_count == 1
    assert wallet.get_credit_grants(customer_id, "default:USD", exclude_expired=True, limit=2).limit == 2


def test_expiry_is_a_transaction_the_sdk_can_read(wallet, customer_id):
    soon = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(milliseconds=1500)
    fund(wallet, customer_id, 2, reason="gift", expires_at=soon.isoformat())
    deadline = time.monotonic() + 15
    expiries = []
    while not expiries and time.monotonic() < deadline:
        time.sleep(0.2)
        listed = get_json(f"/customers/{customer_id}/wallet/default:USD/transactions")
        expiries = [item for item in listed["items"] if item["type"] == "expiry"]
    assert expiries, "the gift's expiry was never recorded"
    transaction = wallet.get_transaction(customer_id, expiries[0]["id"])
    # `expiry` is not among the SDK's TransactionType values; it reads it as the plain string.
    assert transaction.type == "expiry"
    assert transaction.amount == -2
    assert wallet.get_account(customer_id, "default:USD").available == 0


# Errors


def test_unknown_resources_raise_not_found(client, wallet, customer_id):
    for call in (
        lambda: client.customers.get("cust_doesnotexist"),
        lambda: client.assets.get("NOSUCHASSET"),
        lambda: client.assets.quote("NOSUCHASSET", {"source": "USD", "amount": 1}),
        lambda: wallet.get_account(customer_id, "default:EUR"),
        lambda: wallet.get_transaction(customer_id, "no-such-transaction"),
        lambda: wallet.get_customer_wallet("cust_doesnotexist"),
    ):
        with pytest.raises(ResourceNotFoundError) as missing:
            call()
        assert missing.value.status_code == 404


def test_invalid_values_raise_a_validation_problem(client, wallet, customer_id):
    with pytest.raises(HttpResponseError) as invalid:
        client.assets.create({"code": "BAD", "name": "", "rates": [{"source": "USD"}]})
    problem = invalid.value.model
    assert invalid.value.status_code == 422
    assert isinstance(problem, models.ValidationProblem)
    assert problem.status == 422
    assert set(problem.errors) == {"name", "rates[0].rate"}

    with pytest.raises(HttpResponseError) as invalid:
        wallet.create_adjustment(
            customer_id, {"transaction_id": unique("bad"), "asset": "USD", "amount": 1, "reason": "bonus"}
        )
    assert invalid.value.status_code == 422
    assert "reason" in invalid.value.model.errors
    assert wallet.get_customer_wallet(customer_id).accounts == []


def test_malformed_json_is_a_problem_details(client):
    with pytest.raises(HttpResponseError) as malformed:
        client.customers.create(b"{not json")
    assert malformed.value.status_code == 400
    assert isinstance(malformed.value.model, models.ProblemDetails)
    assert malformed.value.model.status == 400


def test_an_unknown_key_is_rejected():
    with make_client("key_test_unknown") as stranger:
        with pytest.raises(ClientAuthenticationError) as rejected:
            stranger.customers.list()
    assert rejected.value.status_code == 401


def test_live_key_sees_no_test_data(live_client, seed_asset, customer_id):
    with pytest.raises(ResourceNotFoundError):
        live_client.customers.get(customer_id)
    with pytest.raises(ResourceNotFoundError):
        live_client.assets.get("VIDGENMIN")
    assert customer_id not in [item.id for item in live_client.customers.list(limit=100).items_property]
