"""Products, subscriptions, usage events, vendors, stats and top-ups through the official Python
SDK, credyt-api==0.2.0, against a live Tally server.

Run by crates/tally/tests/api/sdk.rs alongside test_sdk.py, on the same server: every id a test
makes (event ids are unique per mode, product codes and vendor external ids too) is unique.

The SDK types fees, costs, stats and grant amounts as `int`, so it truncates 0.2505 to 0: every
exact amount is asserted on the response's raw JSON, parsed with Decimal.
"""

import datetime
import json
import os
import time
import typing
import urllib.error
import urllib.request
import uuid
from decimal import Decimal

import pytest
from corehttp.credentials import ServiceKeyCredential
from corehttp.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from credytapi import CredytApiClient, models
from credytapi._utils.model_base import Model

URL = os.environ["TALLY_URL"]
TEST_KEY = os.environ["TALLY_KEY"]
LIVE_KEY = os.environ["TALLY_LIVE_KEY"]

# The seed's asset and product (shared/seeds/001), exactly as written there.
IMG = {
    "code": "IMG",
    "name": "Image Generation",
    "precision": 2,
    "label": "image",
    "symbol": "📸",
    "rates": [{"source": "USD", "rate": 0.10}],
}
GLITCH_IMAGES = {
    "name": "Glitch Images",
    "code": "glitch_images_std",
    "prices": [
        {
            "name": "Image Generation",
            "type": "usage_based",
            "billing_model": {"type": "real_time"},
            "usage_calculation": {"event_type": "image_generated", "usage_type": "unit"},
            "pricing": [{"asset": "IMG", "values": [{"unit_price": 1}]}],
        }
    ],
    "publish": True,
}


def image_price(unit_price):
    """The seed's price at another unit price, for products and versions of the tests' own."""
    price = json.loads(json.dumps(GLITCH_IMAGES["prices"][0]))
    price["pricing"][0]["values"][0]["unit_price"] = unit_price
    return price


def make_client(key):
    # No retries: a 5xx must surface at once rather than be retried into a timeout.
    return CredytApiClient(endpoint=URL, credential=ServiceKeyCredential(key), retry_total=0)


def exact(text):
    """Parses JSON keeping every fractional number exact."""
    return json.loads(text, parse_float=Decimal)


def with_raw(operation, *args, **kwargs):
    """Calls an SDK operation and returns (what the SDK made of the response, the response's
    exact JSON or None when it has no body)."""
    captured = {}

    def keep(pipeline_response, deserialized, _headers):
        text = pipeline_response.http_response.text()
        captured["json"] = exact(text) if text else None
        return deserialized

    result = operation(*args, cls=keep, **kwargs)
    return result, captured["json"]


def required_fields(model):
    """The attributes the SDK's model declares required (not Optional), with their JSON names."""
    annotations = {}
    for klass in reversed(type(model).__mro__):
        annotations.update(getattr(klass, "__annotations__", {}))
    for attribute, field in model._attr_to_rest_field.items():
        annotation = annotations.get(attribute)
        arguments = typing.get_args(annotation) if typing.get_origin(annotation) is typing.Union else ()
        if type(None) not in arguments:
            yield attribute, field._rest_name


def assert_complete(value, path="$", may_be_null=()):
    """Fails when a response lacks a field that the SDK's model declares required, at any depth.
    The SDK itself never checks: a missing field only surfaces later as None. `may_be_null` names
    JSON fields (by name, at any depth) that Tally answers with null by design."""
    if isinstance(value, list):
        for index, item in enumerate(value):
            assert_complete(item, f"{path}[{index}]", may_be_null)
        return
    if not isinstance(value, Model):
        return
    for attribute, name in required_fields(value):
        assert name in value._data, f"{path}.{name} is required by the SDK but missing"
        if value._data[name] is None:
            assert name in may_be_null, f"{path}.{name} is required by the SDK but null"
            continue
        assert_complete(getattr(value, attribute), f"{path}.{name}", may_be_null)


def complete(value, model, may_be_null=()):
    assert isinstance(value, model), type(value)
    assert_complete(value, "$", may_be_null)


def raw_of(operation, *args, **kwargs):
    return with_raw(operation, *args, **kwargs)[1]


def call_json(method, path, body=None, key=TEST_KEY):
    """A request outside the SDK, for endpoints it has no operation for: (status, exact JSON)."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"X-CREDYT-API-KEY": key, "content-type": "application/json"}
    request = urllib.request.Request(URL + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read().decode()
            return response.status, exact(text) if text else None
    except urllib.error.HTTPError as error:
        text = error.read().decode()
        return error.code, exact(text) if text else None


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def unique_code(prefix):
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def now():
    return datetime.datetime.now(datetime.timezone.utc)


def event(event_type, subject=None, data=None, costs=None, event_id=None):
    body = {"id": event_id or unique("evt"), "event_type": event_type, "occurred_at": now().isoformat()}
    if subject is not None:
        body["subject"] = subject
    if data is not None:
        body["data"] = data
    if costs is not None:
        body["costs"] = costs
    return body


@pytest.fixture(scope="module")
def client():
    with make_client(TEST_KEY) as sdk:
        yield sdk


@pytest.fixture(scope="module")
def wallet(client):
    return client.wallets.customer_wallet_ops


@pytest.fixture(scope="module")
def vendors(client):
    return client.vendors.vendors_ops


@pytest.fixture(scope="module")
def glitch(client):
    """The seed's IMG asset and glitch_images_std product, created once: (create answer, raw)."""
    client.assets.create(IMG)
    return with_raw(client.products.create, GLITCH_IMAGES)


def available(wallet, customer, account):
    return raw_of(wallet.get_account, customer, account)["available"]


def fund(wallet, customer, amount, asset):
    body = {"transaction_id": unique("fund"), "asset": asset, "amount": amount, "reason": "external_topup"}
    return wallet.create_adjustment(customer, body)


def glitch_customer(client, **extra):
    body = {"name": unique("glitch-fan"), "subscriptions": [{"products": [{"code": "glitch_images_std"}]}]}
    body.update(extra)
    return client.customers.create(body)


# Products and versions


def test_seed_product_is_created_read_and_listed_by_code(client, glitch):
    created, raw = glitch
    complete(created, models.CreateProductResponse)
    assert created.id.startswith("prp_")
    assert (created.code, created.version, created.status, created.is_default) == (
        "glitch_images_std",
        1,
        "published",
        True,
    )
    assert raw["status"] == "published"

    product = client.products.get(created.id)
    complete(product, models.GetProductResponse)
    assert (product.id, product.code, product.name) == (created.id, "glitch_images_std", "Glitch Images")
    assert product.default_version.version == 1
    assert product.default_version.entitlements == []
    # The SDK leaves its price union (`_types.PriceVariant`) as plain mappings: read them as the
    # model their `type` names.
    [mapping] = product.default_version.prices
    assert mapping["type"] == "usage_based"
    price = models.UsageBasedPrice(mapping)
    assert price.id.startswith("prc_")
    assert (price.name, price.type) == ("Image Generation", "usage_based")
    assert price.billing_model == {"type": "real_time"}
    assert (price.usage_calculation.event_type, price.usage_calculation.usage_type) == ("image_generated", "unit")
    [pricing] = price.pricing
    assert pricing.asset == "IMG"
    assert pricing["values"][0]["unit_price"] == 1  # `values` is a Mapping method on SDK models
    [version] = product.versions
    assert isinstance(version, models.ProductVersionReference)
    assert (version.version, version.status) == (1, "published")
    assert isinstance(version.created_at, datetime.datetime)

    page = client.products.list(code="glitch_images_std")
    complete(page, models.PageGetProductDataResponse)
    assert [(item.id, item.code, item.name) for item in page.items_property] == [
        (created.id, "glitch_images_std", "Glitch Images")
    ]
    assert page.total_count == 1
    assert client.products.list(code=unique_code("nothing")).total_count == 0
    assert created.id in [item.id for item in client.products.list(limit=100).items_property]


def test_versions_are_drafted_published_made_default_and_archived(client, glitch):
    product = client.products.create(
        models.CreateProductRequest(
            name="Glitch Images (versions)", code=unique_code("glitch_versions"), prices=[image_price(1)], publish=True
        )
    )
    draft = client.products.create_version(product.id, {"prices": [image_price(2)], "publish": False})
    complete(draft, models.CreateProductVersionResponse)
    assert (draft.id, draft.code, draft.version, draft.status, draft.is_default) == (
        product.id,
        product.code,
        2,
        "draft",
        False,
    )

    second, raw = with_raw(client.products.get_version, product.id, 2)
    complete(second, models.GetProductVersionResponse)
    assert (second.version, second.status, second.is_default, second.code) == (2, "draft", False, product.code)
    assert raw["prices"][0]["pricing"][0]["values"][0]["unit_price"] == 2
    assert second.entitlements == []

    # Only a published version can become the default.
    with pytest.raises(ResourceExistsError) as unpublished:
        client.products.update_version(product.id, 2, {"make_default": True})
    assert unpublished.value.status_code == 409

    assert client.products.update_version(
        product.id, 2, models.UpdateProductVersionRequest(publish=True, make_default=True)
    ) is None
    # The SDK serializes `version` in paths as an int, so it cannot ask for "default" by name.
    with pytest.raises(TypeError):
        client.products.get_version(product.id, "default")
    status, by_name = call_json("GET", f"/products/{product.id}/default")
    assert (status, by_name["version"]) == (200, 2)
    default = client.products.get_version(product.id, 2)
    assert (default.version, default.status, default.is_default) == (2, "published", True)
    assert client.products.get_version(product.id, 1).is_default is False

    # The default version cannot be archived; another one can.
    with pytest.raises(ResourceExistsError):
        client.products.archive_version(product.id, 2)
    assert client.products.archive_version(product.id, 1) is None

    fetched = client.products.get(product.id)
    complete(fetched, models.GetProductResponse)
    assert [(version.version, version.status) for version in fetched.versions] == [
        (2, "published"),
        (1, "archived"),
    ]
    assert fetched.default_version.version == 2
    assert client.products.get_version(product.id, 1).status == "archived"


def test_deleting_a_product_removes_it_or_archives_it_once_subscribed(client, glitch):
    unused = client.products.create({"name": "Unused", "code": unique_code("unused"), "prices": [image_price(1)]})
    assert client.products.delete(unused.id) is None
    with pytest.raises(ResourceNotFoundError):
        client.products.get(unused.id)

    used = client.products.create(
        {"name": "Used", "code": unique_code("used"), "prices": [image_price(1)], "publish": True}
    )
    customer = client.customers.create({"name": unique("keeper"), "subscriptions": [{"products": [{"id": used.id}]}]})
    assert client.products.delete(used.id) is None
    archived = client.products.get_version(used.id, 1)
    assert archived.status == "archived"
    # The existing subscription keeps its pin.
    [subscription] = client.customers.get(customer.id).subscriptions
    assert [(item.id, item.version) for item in subscription.products] == [(used.id, 1)]


def test_simulated_usage_prices_events_and_stores_nothing(client, glitch):
    product, _ = glitch
    images = [event("image_generated", subject="user-1") for _ in range(3)]
    stray = event("video_rendered")
    simulated, raw = with_raw(
        client.products.simulate_usage, product.id, 1, models.SimulateUsageRequest(events=images + [stray])
    )
    complete(simulated, models.SimulateUsageResponse)
    assert [fee.usage_id for fee in simulated.fees] == [image["id"] for image in images]
    for fee, raw_fee in zip(simulated.fees, raw["fees"]):
        assert isinstance(fee, models.CalculatedFee)
        assert (fee.price_name, fee.currency, fee.event_type, fee.usage_type) == (
            "Image Generation",
            "IMG",
            "image_generated",
            "unit",
        )
        assert fee.price_id.startswith("prc_")
        assert raw_fee["amount"] == 1
        assert raw_fee["unit_price"] == 1
    [warning] = simulated.warnings
    assert stray["id"] in warning

    # Nothing was stored.
    for image in images + [stray]:
        assert client.events.list(event_id=image["id"]).total_count == 0


def test_subscribers_are_listed_per_product(client, glitch):
    product, _ = glitch
    customer = glitch_customer(client, external_id=unique("subscriber"), email="sub@example.com")
    [subscription] = customer.subscriptions
    subscribers = []
    offset = 0
    while True:
        page = client.products.get_subscribers(product.id, limit=100, offset=offset)
        complete(page, models.PageProductSubscriberResponse)
        subscribers += page.items_property
        offset += page.limit
        if offset >= page.total_count:
            break
    [mine] = [item for item in subscribers if item.customer_id == customer.id]
    assert isinstance(mine, models.ProductSubscriberResponse)
    assert (mine.subscription_id, mine.subscription_status, mine.version) == (subscription.id, "active", 1)
    assert mine.customer_name.startswith("glitch-fan")
    assert mine.email == "sub@example.com"
    assert isinstance(mine.started_at, datetime.datetime)
    assert mine.product_rate_plan_id


# Customers with subscriptions


def test_subscriptions_are_created_paused_resumed_and_moved(client, wallet, glitch):
    glitch_product, _ = glitch
    created = glitch_customer(client)
    complete(created, models.CreateCustomerResponse)
    [subscription] = created.subscriptions
    assert isinstance(subscription, models.CustomerSubscription)
    assert subscription.id
    assert subscription.status == "active"
    assert isinstance(subscription.started_at, datetime.datetime)
    [pinned] = subscription.products
    assert (pinned.id, pinned.code, pinned.version) == (glitch_product.id, "glitch_images_std", 1)

    fetched = client.customers.get(created.id)
    complete(fetched, models.GetCustomerResponse)
    assert fetched.active_subscription_count == 1
    assert [(item.id, item.status) for item in fetched.subscriptions] == [(subscription.id, "active")]
    # The subscription made the IMG account.
    assert [account.id for account in wallet.get_customer_wallet(created.id).accounts] == ["default:IMG"]

    chat = client.products.create(
        {
            "name": "Chat",
            "code": unique_code("chat"),
            "publish": True,
            "prices": [
                {
                    "name": "Messages",
                    "type": "usage_based",
                    "billing_model": {"type": "real_time"},
                    "usage_calculation": {"event_type": "chat_message", "usage_type": "unit"},
                    "pricing": [{"asset": "USD", "values": [{"unit_price": 0.25}]}],
                }
            ],
        }
    )
    second = client.customers.create_subscription(
        created.id, models.CreateCustomerSubscription(products=[models.CustomerSubscriptionProduct(id=chat.id)])
    )
    complete(second, models.CustomerSubscription)
    assert second.status == "active"
    assert [(item.id, item.version) for item in second.products] == [(chat.id, 1)]
    assert client.customers.get(created.id).active_subscription_count == 2
    fund(wallet, created.id, 5, "USD")

    client.events.send_usage({"customer_id": created.id, "events": [event("chat_message")]})
    assert available(wallet, created.id, "default:USD") == Decimal("4.75")

    # Paused, a subscription rates nothing; resumed, it rates again.
    assert client.customers.update_subscription(created.id, second.id, {"status": "inactive"}) is None
    statuses = {item.id: item.status for item in client.customers.get(created.id).subscriptions}
    assert statuses == {subscription.id: "active", second.id: "inactive"}
    paused = event("chat_message")
    client.events.send_usage({"customer_id": created.id, "events": [paused]})
    assert client.events.get(paused["id"]).fees == []
    assert available(wallet, created.id, "default:USD") == Decimal("4.75")
    assert client.customers.update_subscription(
        created.id, second.id, models.UpdateCustomerSubscriptionRequest(status="active")
    ) is None
    assert {item.id: item.status for item in client.customers.get(created.id).subscriptions}[second.id] == "active"
    client.events.send_usage({"customer_id": created.id, "events": [event("chat_message")]})
    assert available(wallet, created.id, "default:USD") == Decimal("4.5")


def test_a_subscription_moves_to_another_version_and_rates_at_its_price(client, wallet, glitch):
    product = client.products.create(
        {"name": "Glitch Images (moving)", "code": unique_code("glitch_moving"), "prices": [image_price(1)], "publish": True}
    )
    customer = client.customers.create({"name": unique("mover")})
    subscription = client.customers.create_subscription(
        customer.id, {"products": [{"code": product.code, "version": "default"}]}
    )
    assert subscription.products[0].version == 1
    version_two = client.products.create_version(product.id, {"prices": [image_price(Decimal("2.5"))], "publish": True})
    assert (version_two.version, version_two.status, version_two.is_default) == (2, "published", False)
    fund(wallet, customer.id, 10, "IMG")

    first = event("image_generated")
    client.events.send_usage({"customer_id": customer.id, "events": [first]})
    assert client.customers.update_subscription_product(
        customer.id, subscription.id, product.id, models.UpdateCustomerSubscriptionProductRequest(version=2)
    ) is None
    [moved] = client.customers.get(customer.id).subscriptions
    assert [(item.id, item.version) for item in moved.products] == [(product.id, 2)]

    second = event("image_generated")
    client.events.send_usage({"customer_id": customer.id, "events": [second]})
    fees = [raw_of(client.events.get, item["id"])["fees"][0] for item in (first, second)]
    assert [(fee["product_version"], fee["amount"]) for fee in fees] == [(1, 1), (2, Decimal("2.5"))]
    assert available(wallet, customer.id, "default:IMG") == Decimal("6.5")

    # A draft cannot be subscribed to.
    client.products.create_version(product.id, {"prices": [image_price(3)]})
    with pytest.raises(HttpResponseError) as draft:
        client.customers.update_subscription_product(customer.id, subscription.id, product.id, {"version": 3})
    assert draft.value.status_code == 422


# Usage events


def test_events_are_billed_listed_filtered_and_replayed_safely(client, wallet, glitch):
    product, _ = glitch
    external_id = unique("fan")
    customer = glitch_customer(client, external_id=external_id).id
    fund(wallet, customer, 10, "IMG")

    by_id = models.UsageRequest(
        customer_id=customer,
        events=[
            models.UsageEvent(
                id=unique("img"),
                event_type="image_generated",
                occurred_at=now(),
                subject="user-42",
                description="Generated an image",
                data={"style": "glitch", "hd": True, "steps": 30},
            )
            for _ in range(3)
        ],
    )
    assert client.events.send_usage(by_id) is None
    by_external_id = {
        "customer_external_id": external_id,
        "events": [event("image_generated", subject="user-7") for _ in range(2)] + [event("chat_message")],
    }
    client.events.send_usage(by_external_id)
    assert available(wallet, customer, "default:IMG") == 5

    first = by_id.events[0]
    fetched, raw = with_raw(client.events.get, first.id)
    complete(fetched, models.GetEventResponse)
    assert (fetched.id, fetched.customer_id, fetched.event_type, fetched.subject, fetched.description) == (
        first.id,
        customer,
        "image_generated",
        "user-42",
        "Generated an image",
    )
    assert raw["data"] == {"style": "glitch", "hd": True, "steps": 30}
    # The SDK reads `data` values through Union[str, bool, int], str first: all come back as text.
    assert fetched.data == {"style": "glitch", "hd": "True", "steps": "30"}
    assert abs(fetched.occurred_at - first.occurred_at) < datetime.timedelta(milliseconds=1)
    assert isinstance(fetched.created_at, datetime.datetime)
    [fee] = fetched.fees
    assert isinstance(fee, models.EventFee)
    assert (fee.product_id, fee.product_code, fee.product_version) == (product.id, "glitch_images_std", 1)
    assert (fee.price_name, fee.currency, fee.usage_type) == ("Image Generation", "IMG", "unit")
    assert fee.price_id.startswith("prc_") and fee.id
    assert (raw["fees"][0]["amount"], raw["fees"][0]["unit_price"]) == (1, 1)
    unmatched = client.events.get(by_external_id["events"][2]["id"])
    assert (unmatched.fees, unmatched.customer_id) == ([], customer)

    listed, raw_list = with_raw(client.events.list, customer_id=customer)
    complete(listed, models.PageListEventsItem)
    assert listed.total_count == 6
    item = next(item for item in listed.items_property if item.id == first.id)
    assert isinstance(item, models.ListEventsItem)
    assert (item.customer_id, item.external_id, item.has_fees, item.fee_currency) == (customer, external_id, True, "IMG")
    assert next(raw_item for raw_item in raw_list["items"] if raw_item["id"] == first.id)["total_fees"] == 1
    # Newest first by occurred_at.
    occurred = [item.occurred_at for item in listed.items_property]
    assert occurred == sorted(occurred, reverse=True)

    assert client.events.list(customer_id=customer, has_fees=True).total_count == 5
    [without_fees] = client.events.list(customer_id=customer, has_fees=False).items_property
    assert (without_fees.event_type, without_fees.has_fees) == ("chat_message", False)
    assert client.events.list(customer_external_id=external_id, event_types="chat_message,other").total_count == 1
    assert client.events.list(customer_id=customer, event_types="image_generated").total_count == 5
    assert {item.subject for item in client.events.list(customer_id=customer, subject="user-7").items_property} == {
        "user-7"
    }
    assert client.events.list(customer_id=customer, subject="user-7").total_count == 2
    assert [item.id for item in client.events.list(event_id=first.id).items_property] == [first.id]
    today = now().date()
    assert client.events.list(customer_id=customer, period_from=today).total_count == 6
    assert client.events.list(customer_id=customer, period_to=today - datetime.timedelta(days=1)).total_count == 0
    paged = client.events.list(customer_id=customer, limit=2, offset=2)
    assert (paged.limit, paged.offset, len(paged.items_property)) == (2, 2, 2)

    # A replay of both batches is accepted and changes nothing.
    client.events.send_usage(by_id)
    client.events.send_usage(by_external_id)
    assert available(wallet, customer, "default:IMG") == 5
    assert client.events.list(customer_id=customer).total_count == 6

    # Each fee is a wallet transaction the SDK reads.
    status, history = call_json("GET", f"/customers/{customer}/wallet/default:IMG/transactions?limit=100")
    assert status == 200
    fees = [entry for entry in history["items"] if entry["type"] == "fee"]
    assert len(fees) == 5
    transaction, raw_transaction = with_raw(wallet.get_transaction, customer, fees[0]["id"])
    complete(transaction, models.GetTransactionResponse)
    assert transaction.type == models.TransactionType.FEE
    assert (transaction.account_id, transaction.asset, raw_transaction["amount"]) == ("default:IMG", "IMG", -1)

    whole = wallet.get_customer_wallet(customer)
    assert [(account.id, account.available) for account in whole.accounts] == [("default:IMG", 5)]

    # Usage is never refused for a low balance: the account goes negative.
    client.events.send_usage({"customer_id": customer, "events": [event("image_generated") for _ in range(7)]})
    account, raw_account = with_raw(wallet.get_account, customer, "default:IMG")
    assert raw_account["available"] == -2
    assert (account.pending_in, account.pending_out) == (0, 0)


TOKENS_PRODUCT = {
    "name": "LLM API",
    "prices": [
        {
            "name": "Tokens",
            "type": "usage_based",
            "billing_model": {"type": "real_time"},
            "pricing_model": "tiered",
            "tiering": {"basis": "volume", "period": "monthly"},
            "usage_calculation": {
                "event_type": "completion",
                "usage_type": "volume",
                "volume_field": "tokens",
                "billable_dimensions": ["model"],
            },
            "pricing": [
                {
                    "asset": "USD",
                    "values": [
                        {
                            "name": "Any model",
                            "dimensions": {"model": "*"},
                            "values": [{"up_to": 1000, "volume_rate": 0.002}, {"volume_rate": 0.001}],
                        },
                        {
                            "name": "Large model",
                            "dimensions": {"model": "large"},
                            "values": [{"up_to": 1000, "volume_rate": 0.02}, {"volume_rate": 0.01}],
                        },
                    ],
                }
            ],
        },
        {
            "name": "Storage",
            "type": "usage_based",
            "billing_model": {"type": "real_time"},
            "pricing_model": "bulk",
            "tiering": {"basis": "volume", "period": "monthly"},
            "usage_calculation": {"event_type": "stored", "usage_type": "volume", "volume_field": "gb"},
            "pricing": [{"asset": "USD", "values": [{"up_to": 100, "volume_rate": 0.01}, {"volume_rate": 0.005}]}],
        },
        {
            "name": "Transcription",
            "type": "usage_based",
            "billing_model": {"type": "real_time"},
            "pricing_model": "package",
            "usage_calculation": {"event_type": "transcribed", "usage_type": "unit_and_volume", "volume_field": "seconds"},
            "pricing": [
                {
                    "asset": "USD",
                    "values": [{"unit_price": 0.01, "volume_rate": 0.05, "package_size": 60, "max_amount": 0.2}],
                }
            ],
        },
        {
            "name": "Monthly platform fee",
            "type": "fixed",
            "billing_model": {"type": "recurring", "recurring": {"interval": "month"}},
            "pricing": [{"asset": "USD", "values": [{"name": "Platform", "unit_price": 5}]}],
        },
    ],
    "entitlements": [
        {
            "name": "Welcome credit",
            "asset": "USD",
            "amount": 2.5,
            "purpose": "promotion",
            "lifecycle": {"duration": "month", "refresh": {"strategy": "expire_and_replace"}},
        }
    ],
    "publish": True,
}


def test_tiered_bulk_dimensional_and_package_fees_are_exact(client, wallet):
    product = client.products.create(dict(TOKENS_PRODUCT, code=unique_code("llm_api")))
    read_back, raw_product = with_raw(client.products.get, product.id)
    complete(read_back, models.GetProductResponse)
    prices = read_back.default_version.prices
    assert [price["type"] for price in prices] == ["usage_based"] * 3 + ["fixed"]
    tokens, storage, transcription = (models.UsageBasedPrice(price) for price in prices[:3])
    platform = models.FixedPrice(prices[3])
    assert (tokens.pricing_model, tokens.tiering.basis, tokens.tiering.period) == ("tiered", "volume", "monthly")
    assert tokens.usage_calculation.billable_dimensions == ["model"]
    assert storage.pricing_model == "bulk"
    assert platform.billing_model["recurring"]["interval"] == "month"
    assert transcription.usage_calculation.volume_field == "seconds"
    [welcome] = read_back.default_version.entitlements
    assert isinstance(welcome, models.Entitlement)
    assert (welcome.name, welcome.asset, welcome.purpose) == ("Welcome credit", "USD", "promotion")
    assert welcome.lifecycle.refresh.strategy == "expire_and_replace"
    [any_model, large_model] = raw_product["default_version"]["prices"][0]["pricing"][0]["values"]
    assert (any_model["dimensions"], large_model["values"][0]["volume_rate"]) == ({"model": "*"}, Decimal("0.02"))
    assert raw_product["default_version"]["entitlements"][0]["amount"] == Decimal("2.5")

    customer = client.customers.create({"name": unique("builder")}).id
    fund(wallet, customer, 20, "USD")
    subscription = client.customers.create_subscription(customer, {"products": [{"id": product.id}]})
    complete(subscription, models.CustomerSubscription)
    assert subscription.status == "active"
    assert isinstance(subscription.renews_at, datetime.datetime), "a monthly fee sets the renewal"
    # 20 paid + 2.5 welcome credit − 5 platform fee.
    assert available(wallet, customer, "default:USD") == Decimal("17.5")
    grants, raw_grants = with_raw(wallet.get_credit_grants, customer, "default:USD", purpose="promotion")
    complete(grants, models.PageCreditGrantItem)
    assert [item.purpose for item in grants.items_property] == ["promotion"]

    events = [
        event("completion", data={"tokens": 600, "model": "small"}),
        event("completion", data={"tokens": 600, "model": "large"}),
        event("completion", data={"tokens": "250.5", "model": "small"}),
        event("stored", data={"gb": 80}),
        event("stored", data={"gb": 40}),
        event("transcribed", data={"seconds": 61}),
        event("transcribed", data={"seconds": 500}),
    ]
    client.events.send_usage({"customer_id": customer, "events": events})
    expected = [
        Decimal("1.2"),  # 600 × 0.002, the first tier (any model)
        Decimal("10"),  # 400 × 0.02 + 200 × 0.01: crosses 1,000 tokens (large model)
        Decimal("0.2505"),  # 250.5 × 0.001, the second tier (any model)
        Decimal("0.8"),  # 80 GB × 0.01: the bulk total is 80
        Decimal("0.2"),  # 40 GB × 0.005: the bulk total 120 prices the whole event in tier two
        Decimal("0.11"),  # 0.01 + 2 started packages of 60 s × 0.05
        Decimal("0.2"),  # 0.01 + 9 × 0.05 = 0.46, clamped to the maximum
    ]
    fees = [raw_of(client.events.get, item["id"])["fees"] for item in events]
    assert [fee[0]["amount"] for fee in fees] == expected
    assert fees[1][0]["dimensions"] == {"model": "large"}
    # No entry names "small": the fallback entry priced it, and the fee says which one matched.
    assert fees[2][0]["dimensions"] == {"model": "*"}
    assert [fee[0]["price_name"] for fee in fees] == ["Tokens"] * 3 + ["Storage"] * 2 + ["Transcription"] * 2
    assert (fees[1][0]["input_volume"], fees[2][0]["input_volume"]) == (600, Decimal("250.5"))
    assert fees[5][0]["package_size"] == 60
    # The SDK truncates what its int fields cannot hold: 0.2505 reads as 0.
    assert client.events.get(events[2]["id"]).fees[0].amount == 0
    assert available(wallet, customer, "default:USD") == Decimal("17.5") - sum(expected)
    # The welcome credit burns first.
    assert raw_of(wallet.get_credit_grants, customer, "default:USD", purpose="promotion")["items"][0]["available"] == 0

    # The SDK declares a listed event's `external_id` required, but this customer has none: Tally
    # answers null, which the SDK reads as None.
    unnamed = client.events.list(customer_id=customer)
    complete(unnamed, models.PageListEventsItem, may_be_null={"external_id"})
    assert {item.external_id for item in unnamed.items_property} == {None}
    listed = raw_of(client.events.list, customer_id=customer, event_types="completion")
    assert sorted(item["total_fees"] for item in listed["items"]) == sorted(expected[:3])
    assert {item["fee_currency"] for item in listed["items"]} == {"USD"}


# Vendors, costs and profitability


def test_vendor_costs_give_exact_stats_per_event_customer_and_vendor(client, wallet, vendors, glitch):
    external_id = unique("gpu-cloud")
    created, raw_created = with_raw(vendors.create_vendor, models.CreateVendorRequest(name="GPU Cloud", external_id=external_id))
    complete(created, models.CreateVendorResponse)
    assert created.id and isinstance(created.created_at, datetime.datetime)
    storage = vendors.create_vendor({"name": "Blob Store"})

    vendor = vendors.get_vendor(created.id)
    complete(vendor, models.VendorSummary)
    assert (vendor.id, vendor.name, vendor.external_id) == (created.id, "GPU Cloud", external_id)
    assert vendor.created_at == created.created_at
    page = vendors.list_vendors(external_id=external_id)
    complete(page, models.PageVendorSummary)
    assert [item.id for item in page.items_property] == [created.id]
    assert {created.id, storage.id} <= {item.id for item in vendors.list_vendors(limit=100).items_property}
    with pytest.raises(ResourceExistsError) as duplicate:
        vendors.create_vendor({"name": "GPU Cloud again", "external_id": external_id})
    assert duplicate.value.status_code == 409

    customer_external_id = unique("profitable")
    customer = glitch_customer(client, external_id=customer_external_id).id
    fund(wallet, customer, 10, "IMG")
    first = event("image_generated", costs=[{"id": unique("cost"), "vendor_id": created.id, "amount": 0.03, "category": "gpu"}])
    second = event(
        "image_generated",
        costs=[
            {"id": unique("cost"), "vendor_external_id": external_id, "amount": 0.02, "category": "gpu", "currency": "USD"},
            {"id": unique("cost"), "vendor_id": storage.id, "amount": 0.01, "category": "storage"},
        ],
    )
    third = event("image_generated")
    client.events.send_usage({"customer_id": customer, "events": [first, second, third]})

    fetched, raw = with_raw(client.events.get, second["id"])
    assert [(cost.id, cost.vendor_id, cost.vendor_external_id, cost.category) for cost in fetched.costs] == [
        (second["costs"][0]["id"], None, external_id, "gpu"),
        (second["costs"][1]["id"], storage.id, None, "storage"),
    ]
    assert [cost["amount"] for cost in raw["costs"]] == [Decimal("0.02"), Decimal("0.01")]
    assert isinstance(fetched.stats, models.ProfitabilityStats)
    # One IMG at 0.10 USD is 0.10 of revenue; 0.03 of costs leaves 0.07, a 70% margin.
    assert {key: raw["stats"][key] for key in ("gross_revenue", "total_costs", "net_revenue", "margin", "currency")} == {
        "gross_revenue": Decimal("0.1"),
        "total_costs": Decimal("0.03"),
        "net_revenue": Decimal("0.07"),
        "margin": 70,
        "currency": "USD",
    }

    vendor_stats, raw_vendor_stats = with_raw(vendors.get_vendor_stats, created.id)
    complete(vendor_stats, models.VendorStats)
    assert raw_vendor_stats["total_costs"] == Decimal("0.05")
    assert [(item["category"], item["cost"]) for item in raw_vendor_stats["categories"]] == [("gpu", Decimal("0.05"))]
    assert raw_of(vendors.get_vendor_stats, storage.id, category="storage")["total_costs"] == Decimal("0.01")
    assert raw_of(vendors.get_vendor_stats, created.id, category="storage")["total_costs"] == 0

    # Three images are 0.30 of revenue; 0.06 of costs leaves 0.24, an 80% margin.
    expected = {
        "gross_revenue": Decimal("0.3"),
        "total_costs": Decimal("0.06"),
        "net_revenue": Decimal("0.24"),
        "margin": 80,
        "currency": "USD",
    }
    stats, raw_stats = with_raw(client.customers.get_stats, customer)
    complete(stats, models.CustomerProfitability)
    assert (stats.currency, stats.margin) == ("USD", 80)
    assert {key: raw_stats[key] for key in expected} == expected

    found = None
    offset = 0
    while found is None:
        page, raw_page = with_raw(client.customers.list_stats, limit=100, offset=offset)
        complete(page, models.CustomerStatsPage)
        assert page.period_from <= now().date() <= page.period_to
        for item, raw_item in zip(page.items_property, raw_page["items"]):
            if item.id == customer:
                assert isinstance(item, models.CustomerStatsItem)
                assert item.external_id == customer_external_id
                found = raw_item
        offset += 100
        assert found is not None or offset < page.total_count, "the customer is not among the stats"
    assert {key: found["stats"][key] for key in expected} == expected
    summary = raw_page["summary"]
    assert summary["gross_revenue"] >= Decimal("0.3") and summary["currency"] == "USD"
    assert summary["net_revenue"] == summary["gross_revenue"] - summary["total_costs"]
    # A period before this month holds nothing of this customer's.
    last_year = now().date() - datetime.timedelta(days=400)
    earlier = raw_of(client.customers.list_stats, period_from=last_year, period_to=last_year + datetime.timedelta(days=1))
    assert customer not in [item["id"] for item in earlier["items"] if item["stats"]["gross_revenue"] != 0]


# Top-ups


def test_a_top_up_succeeds_through_the_test_helper_and_credits_the_wallet(client, wallet, glitch):
    customer = client.customers.create({"name": unique("buyer")}).id
    request = models.InitiateTopUpRequest(
        customer_id=customer,
        amount=Decimal(10),
        currency="USD",
        destination=models.TopUpDestination(asset="IMG"),
        description="Image credits",
        return_url="https://platform.example/ok",
        failure_url="https://platform.example/failed",
        metadata={"order": "42"},
    )
    initiated, raw = with_raw(client.top_ups.initiate, request)
    complete(initiated, models.InitiateTopUpResponse)
    assert initiated.id.startswith("top_")
    assert initiated.status == "initiated"
    assert initiated.redirect_url.startswith(f"{URL}/checkout/{initiated.id}?token=")
    assert initiated.expires_at > initiated.created_at

    # While open, what it buys (10 USD at 0.10 = 100 IMG) waits in pending_in.
    account, raw_account = with_raw(wallet.get_account, customer, "default:IMG")
    assert (raw_account["available"], raw_account["pending_in"]) == (0, 100)
    fetched, raw_fetched = with_raw(client.top_ups.get, initiated.id)
    complete(fetched, models.GetTopUpResponse)
    assert (fetched.id, fetched.customer_id, fetched.currency, fetched.status) == (
        initiated.id,
        customer,
        "USD",
        "initiated",
    )
    assert fetched.amount == 10 and raw_fetched["amount"] == 10
    assert fetched.destination.asset == "IMG"
    assert fetched.destination.account_name == "default"

    status, _ = call_json("POST", f"/test-helpers/top-ups/{initiated.id}/succeed", {})
    assert status == 200
    assert client.top_ups.get(initiated.id).status == "succeeded"
    account, raw_account = with_raw(wallet.get_account, customer, "default:IMG")
    assert (raw_account["available"], raw_account["pending_in"]) == (100, 0)
    [grant] = wallet.get_credit_grants(customer, "default:IMG").items_property
    assert grant.purpose == "paid" and grant.available == 100
    # Credited once, whatever the number of notifications.
    assert call_json("POST", f"/test-helpers/top-ups/{initiated.id}/succeed", {})[0] == 200
    assert available(wallet, customer, "default:IMG") == 100


def test_a_fee_paid_in_advance_waits_for_its_top_up(client, wallet):
    plan = client.products.create(
        {
            "name": "Pro plan",
            "code": unique_code("pro"),
            "publish": True,
            "prices": [
                {
                    "name": "Pro monthly",
                    "type": "fixed",
                    "billing_model": {"type": "recurring", "recurring": {"interval": "month"}},
                    "collection": {"type": "balance", "timing": "in_advance"},
                    "pricing": [{"asset": "USD", "values": [{"unit_price": 9.99}]}],
                }
            ],
        }
    )
    customer = client.customers.create({"name": unique("pro")}).id
    waiting = client.customers.create_subscription(
        customer,
        models.CreateCustomerSubscription(
            products=[models.CustomerSubscriptionProduct(code=plan.code)],
            return_url="https://platform.example/welcome",
            failure_url="https://platform.example/sorry",
        ),
    )
    complete(waiting, models.CustomerSubscription)
    assert waiting.status == models.SubscriptionStatus.ACTION_REQUIRED
    [action] = waiting.required_actions
    assert isinstance(action, models.RequiredSubscriptionAction)
    assert action.type == "payment"
    assert action.redirect_url.startswith(f"{URL}/checkout/top_")
    assert raw_of(wallet.get_account, customer, "default:USD")["pending_in"] == Decimal("9.99")

    # The payment link is a top-up: paying it starts the subscription, which collects its fee.
    top_up_id = action.redirect_url.split("/checkout/")[1].split("?")[0]
    assert client.top_ups.get(top_up_id).amount == Decimal("9.99")
    assert call_json("POST", f"/test-helpers/top-ups/{top_up_id}/succeed", {})[0] == 200
    deadline = time.monotonic() + 15
    status = None
    while status != "active" and time.monotonic() < deadline:
        time.sleep(0.1)
        [subscription] = client.customers.get(customer).subscriptions
        status = subscription.status
    assert status == "active"
    account = raw_of(wallet.get_account, customer, "default:USD")
    assert (account["available"], account["pending_in"]) == (0, 0)


def test_a_failed_top_up_credits_nothing_until_its_money_arrives(client, wallet):
    customer = client.customers.create({"name": unique("declined")}).id
    initiated = client.top_ups.initiate(
        {
            "customer_id": customer,
            "amount": 12.34,
            "currency": "USD",
            "return_url": "https://platform.example/ok",
            "failure_url": "https://platform.example/failed",
        }
    )
    assert raw_of(wallet.get_account, customer, "default:USD")["pending_in"] == Decimal("12.34")
    status, body = call_json("POST", f"/test-helpers/top-ups/{initiated.id}/fail", {})
    assert (status, body["status"]) == (200, "failed")
    failed = client.top_ups.get(initiated.id)
    complete(failed, models.GetTopUpResponse)
    assert failed.status == "failed"
    account = raw_of(wallet.get_account, customer, "default:USD")
    assert (account["available"], account["pending_in"]) == (0, 0)
    # Helpers do not exist for live keys.
    assert call_json("POST", f"/test-helpers/top-ups/{initiated.id}/succeed", {}, key=LIVE_KEY)[0] == 404
    # Money the provider reports received after all is credited, once.
    for _ in range(2):
        status, body = call_json("POST", f"/test-helpers/top-ups/{initiated.id}/succeed", {})
        assert (status, body["status"]) == (200, "succeeded")
    assert client.top_ups.get(initiated.id).status == "succeeded"
    account = raw_of(wallet.get_account, customer, "default:USD")
    assert (account["available"], account["pending_in"]) == (Decimal("12.34"), 0)


# Errors


def test_unknown_resources_raise_not_found(client, vendors, glitch):
    product, _ = glitch
    customer = client.customers.create({"name": unique("lost")}).id
    for call in (
        lambda: client.products.get("prp_doesnotexist"),
        lambda: client.products.get_version(product.id, 99),
        lambda: client.products.update_version(product.id, 99, {"publish": True}),
        lambda: client.products.archive_version(product.id, 99),
        lambda: client.products.simulate_usage(product.id, 99, {"events": [event("image_generated")]}),
        lambda: client.products.get_subscribers("prp_doesnotexist"),
        lambda: client.products.create_version("prp_doesnotexist", {"prices": [image_price(1)]}),
        lambda: client.customers.get_stats("cust_doesnotexist"),
        lambda: client.customers.update_subscription(customer, "sub_doesnotexist", {"status": "inactive"}),
        lambda: client.events.get(unique("never-sent")),
        lambda: vendors.get_vendor("ven_doesnotexist"),
        lambda: vendors.get_vendor_stats("ven_doesnotexist"),
        lambda: client.top_ups.get("top_doesnotexist"),
    ):
        with pytest.raises(ResourceNotFoundError) as missing:
            call()
        assert missing.value.status_code == 404


def test_conflicts_raise_resource_exists(client, glitch):
    with pytest.raises(ResourceExistsError) as duplicate:
        client.products.create(GLITCH_IMAGES)
    assert duplicate.value.status_code == 409


def test_invalid_requests_raise_a_validation_problem(client, glitch):
    product, _ = glitch
    customer = glitch_customer(client).id

    stale = dict(event("image_generated"), occurred_at=(now() - datetime.timedelta(days=30)).isoformat())
    fine = event("image_generated")
    with pytest.raises(HttpResponseError) as refused:
        client.events.send_usage({"customer_id": customer, "events": [fine, stale]})
    assert refused.value.status_code == 422
    assert isinstance(refused.value.model, models.ValidationProblem)
    assert "events[1].occurred_at" in refused.value.model.errors
    # The batch is refused whole.
    with pytest.raises(ResourceNotFoundError):
        client.events.get(fine["id"])

    custom = json.loads(json.dumps(GLITCH_IMAGES))
    custom["code"] = unique_code("custom")
    custom["prices"][0]["usage_calculation"]["usage_type"] = "custom"
    with pytest.raises(HttpResponseError) as unsupported:
        client.products.create(custom)
    assert unsupported.value.status_code == 422
    assert any("usage_type" in field for field in unsupported.value.model.errors), unsupported.value.model.errors

    problems = {}
    for name, call in {
        "unknown customer": lambda: client.events.send_usage(
            {"customer_external_id": "nobody", "events": [event("image_generated")]}
        ),
        "unknown product": lambda: client.customers.create_subscription(
            customer, {"products": [{"code": unique_code("nothing")}]}
        ),
        "finer than cents": lambda: client.top_ups.initiate(
            {
                "customer_id": customer,
                "amount": 1.001,
                "currency": "USD",
                "return_url": "https://platform.example/ok",
                "failure_url": "https://platform.example/failed",
            }
        ),
    }.items():
        with pytest.raises(HttpResponseError) as invalid:
            call()
        assert invalid.value.status_code == 422, name
        assert isinstance(invalid.value.model, models.ValidationProblem), name
        problems[name] = set(invalid.value.model.errors)
    assert problems == {
        "unknown customer": {"customer_external_id"},
        "unknown product": {"products[0].code"},
        "finer than cents": {"amount"},
    }
