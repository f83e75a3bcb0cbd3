"""Connected accounts, webhooks and the billing portal through the official Python SDK,
credyt-api==0.2.0, against a live Tally server; and the check that the SDK suite drives all 54
operations of the SDK.

Run by crates/tally/tests/api/sdk.rs alongside the other test_*.py files, on the same server.
The SDK has no setting for `X-CREDYT-ACCOUNT`: every operation takes azure-core style
`headers=` (corehttp passes them on), so `**inside(account_id)` makes one call act inside a
connected account. Webhooks are received by a small HTTP server on 127.0.0.1 that this file
runs; every destination it makes is deleted when the file's tests end.

The SDK types amounts as `int` or sends them as floats: exact amounts are asserted on the raw
JSON of the response (and of webhook bodies), parsed with Decimal.
"""

import datetime
import hashlib
import hmac
import http.cookiejar
import inspect
import json
import os
import re
import threading
import time
import urllib.request
import uuid
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from corehttp.credentials import ServiceKeyCredential
from corehttp.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from credytapi import CredytApiClient, models
from credytapi.operations import _operations

URL = os.environ["TALLY_URL"]
TEST_KEY = os.environ["TALLY_KEY"]
LIVE_KEY = os.environ["TALLY_LIVE_KEY"]

# Every operation of credyt-api 0.2.0, as ../shared/reference/credyt-api.md lists them ("group"
# is the SDK's operation class without its `Operations` suffix).
OPERATIONS = [
    "BillingPortal.create_portal_session",
    "Assets.create",
    "Assets.list",
    "Assets.get",
    "Assets.add_rate",
    "Assets.quote",
    "Products.create",
    "Products.get",
    "Products.list",
    "Products.delete",
    "Products.create_version",
    "Products.get_version",
    "Products.update_version",
    "Products.archive_version",
    "Products.simulate_usage",
    "Products.get_subscribers",
    "Customers.create",
    "Customers.list",
    "Customers.list_stats",
    "Customers.get",
    "Customers.get_stats",
    "Customers.update",
    "Customers.create_subscription",
    "Customers.update_subscription",
    "Customers.update_subscription_product",
    "TopUps.initiate",
    "TopUps.get",
    "Events.send_usage",
    "Events.list",
    "Events.get",
    "Accounts.create",
    "Accounts.list",
    "Accounts.get",
    "Accounts.get_context",
    "WalletsCustomerWalletOps.get_customer_wallet",
    "WalletsCustomerWalletOps.get_account",
    "WalletsCustomerWalletOps.create_adjustment",
    "WalletsCustomerWalletOps.get_transaction",
    "WalletsCustomerWalletOps.create_charge",
    "WalletsCustomerWalletOps.get_credit_grants",
    "VendorsVendorsOps.create_vendor",
    "VendorsVendorsOps.list_vendors",
    "VendorsVendorsOps.get_vendor",
    "VendorsVendorsOps.get_vendor_stats",
    "WebhooksWebhooks.create_webhook_destination",
    "WebhooksWebhooks.list_webhook_destinations",
    "WebhooksWebhooks.get_webhook_destination",
    "WebhooksWebhooks.update_webhook_destination",
    "WebhooksWebhooks.delete_webhook_destination",
    "WebhooksWebhooks.test_webhook_destination",
    "WebhooksWebhooks.test_connected_webhook_destination",
    "WebhooksWebhooks.test_webhook_destinations",
    "WebhooksWebhooks.test_connected_webhook_destinations",
    "WebhooksWebhooks.list_events",
]

# How long a webhook may take to arrive (the test server looks for deliveries every 50 ms).
DELIVERY_SECONDS = 20


def make_client(key):
    # No retries: a 5xx must surface at once rather than be retried into a timeout.
    return CredytApiClient(endpoint=URL, credential=ServiceKeyCredential(key), retry_total=0)


def exact(text):
    """Parses JSON keeping every fractional number exact."""
    return json.loads(text, parse_float=Decimal)


def with_raw(operation, *args, **kwargs):
    """Calls an SDK operation and returns (what the SDK made of the response, the response's
    exact JSON or None when it has no body, its status code)."""
    captured = {}

    def keep(pipeline_response, deserialized, _headers):
        response = pipeline_response.http_response
        text = response.text()
        captured["json"] = exact(text) if text else None
        captured["status"] = response.status_code
        return deserialized

    result = operation(*args, cls=keep, **kwargs)
    return result, captured["json"], captured["status"]


def raw_of(operation, *args, **kwargs):
    return with_raw(operation, *args, **kwargs)[1]


def inside(account_id):
    """The keyword arguments that make one SDK call act inside a connected account."""
    return {"headers": {"X-CREDYT-ACCOUNT": account_id}}


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def unique_code(prefix):
    return prefix + uuid.uuid4().hex[:8].upper()


def now():
    return datetime.datetime.now(datetime.timezone.utc)


def not_found(call):
    with pytest.raises(ResourceNotFoundError) as missing:
        call()
    assert missing.value.status_code == 404
    return missing.value


def eventually(what, condition, seconds=DELIVERY_SECONDS):
    """Waits until `condition()` gives something truthy, and returns it."""
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def signed_by(secret, headers, body):
    """Whether a delivery carries a valid `Credyt-Signature` of `body` (docs/webhooks.md)."""
    parts = dict(part.split("=", 1) for part in headers["credyt-signature"].split(","))
    expected = hmac.new(secret.encode(), f"{parts['t']}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts["v0"]) and abs(time.time() - int(parts["t"])) < 300


class Receiver:
    """An HTTP server on 127.0.0.1 that answers 200 to every POST and keeps what it got, by path."""

    def __init__(self):
        self.lock = threading.Lock()
        self.received = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    receiver.received.setdefault(self.path.strip("/"), []).append(
                        ({k.lower(): v for k, v in self.headers.items()}, body)
                    )
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name):
        return f"http://127.0.0.1:{self.server.server_address[1]}/{name}"

    def deliveries(self, name):
        """(headers, raw body, exact envelope) of every delivery to `name` so far."""
        with self.lock:
            got = list(self.received.get(name, []))
        return [(headers, body, exact(body.decode())) for headers, body in got]

    def event(self, name, event_id):
        """Waits for the delivery of event `event_id` to `name`: (headers, raw body, envelope)."""

        def found():
            return next((delivery for delivery in self.deliveries(name) if delivery[2]["id"] == event_id), None)

        return eventually(f"event {event_id} at /{name}", found)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def client():
    with make_client(TEST_KEY) as sdk:
        yield sdk


@pytest.fixture(scope="module")
def live_client():
    with make_client(LIVE_KEY) as sdk:
        yield sdk


@pytest.fixture(scope="module")
def hooks(client):
    return client.webhooks.webhooks


@pytest.fixture(scope="module")
def wallet(client):
    return client.wallets.customer_wallet_ops


@pytest.fixture(scope="module")
def receiver():
    server = Receiver()
    yield server
    server.close()


@pytest.fixture(scope="module")
def studio(client):
    """A connected account, made through the SDK, for the file's tests."""
    return client.accounts.create({"name": "Glitch Studio", "external_id": unique("studio")}).id


@pytest.fixture(scope="module")
def destinations(hooks, receiver):
    """Two destinations at the receiver: `own` gets the platform's events (connect false),
    `connect` those of every connected account. Deleted when the file's tests end, so no
    later test's events go to them. Yields {name: (id, secret)}."""
    made = {}
    for name, body in (
        ("own", {"url": receiver.url("own"), "topics": ["customer.created", "transaction.completed"]}),
        ("connect", {"url": receiver.url("connect"), "connect": True}),
    ):
        created = hooks.create_webhook_destination(body)
        made[name] = (created.id, created.secret)
    yield made
    for destination_id, _ in made.values():
        hooks.delete_webhook_destination(destination_id)


def logged(hooks, destination_id, **filters):
    """Every item of the delivery log of one destination (all pages), as exact JSON."""
    items, cursor = [], None
    while True:
        page = raw_of(hooks.list_events, destination_id=destination_id, limit=100, next=cursor, **filters)
        items += page["models"]
        cursor = page["pagination"].get("next")
        if cursor is None:
            return items


# Connected accounts


def test_connected_accounts_are_created_listed_and_read(client, live_client):
    external_id = unique("studio")
    request = models.CreateAccountRequest(name="Pixel Works", external_id=external_id, metadata={"tier": "gold"})
    created, raw, status = with_raw(client.accounts.create, request)
    assert status == 201
    assert isinstance(created, models.CreateAccountResponse)
    assert created.id.startswith("acc_") and raw["id"] == created.id

    account, raw_account, _ = with_raw(client.accounts.get, created.id)
    assert isinstance(account, models.ConnectedAccount)
    assert (account.id, account.name, account.external_id, account.metadata) == (
        created.id,
        "Pixel Works",
        external_id,
        {"tier": "gold"},
    )
    assert isinstance(account.created_at, datetime.datetime)
    assert raw_account["metadata"] == {"tier": "gold"}

    page, raw_page, _ = with_raw(client.accounts.list, external_id=external_id)
    assert isinstance(page, models.PageConnectedAccount)
    assert [item.id for item in page.items_property] == [created.id]
    assert (page.total_count, page.limit, page.offset) == (1, 20, 0)
    assert raw_page["items"][0] == raw_account

    other = client.accounts.create({"name": "Another studio"})
    assert other.id != created.id
    first, second = client.accounts.list(limit=1), client.accounts.list(limit=1, offset=1)
    assert (first.limit, len(first.items_property), second.offset, len(second.items_property)) == (1, 1, 1, 1)
    assert first.items_property[0].id != second.items_property[0].id
    assert {created.id, other.id} <= {item.id for item in client.accounts.list(limit=100).items_property}
    # The account routes always act for the platform, even when a call names an account.
    assert client.accounts.get(created.id, **inside(other.id)).name == "Pixel Works"
    assert client.accounts.list(external_id=external_id, **inside(other.id)).total_count == 1

    with pytest.raises(ResourceExistsError) as taken:
        client.accounts.create({"name": "Copycat", "external_id": external_id})
    assert taken.value.status_code == 409
    with pytest.raises(HttpResponseError) as invalid:
        client.accounts.create({"name": ""})
    assert invalid.value.status_code == 422
    not_found(lambda: client.accounts.get("acc_doesnotexist"))

    # Accounts belong to the environment of the key that made them; external ids too.
    not_found(lambda: live_client.accounts.get(created.id))
    assert live_client.accounts.list(external_id=external_id).total_count == 0
    live_twin = live_client.accounts.create({"name": "Pixel Works (live)", "external_id": external_id})
    assert live_twin.id != created.id
    assert [item.id for item in live_client.accounts.list(external_id=external_id).items_property] == [live_twin.id]
    assert [item.id for item in client.accounts.list(external_id=external_id).items_property] == [created.id]


def test_the_account_header_goes_through_the_sdk_to_the_context(client, live_client, studio):
    platform = client.accounts.get_context()
    assert platform.account_id.startswith("acc_") and platform.account_id != studio
    context, raw, _ = with_raw(client.accounts.get_context, **inside(studio))
    assert isinstance(context, models.AccountContext)
    assert (context.account_id, context.environment, context.name) == (studio, "test", "Glitch Studio")
    assert raw["account_id"] == studio

    # A header naming no connected account of the key's environment is a 404 that names it.
    for sdk, account in ((client, "acc_doesnotexist"), (client, "not-an-id"), (live_client, studio)):
        problem = not_found(lambda: sdk.customers.list(**inside(account)))
        assert "X-CREDYT-ACCOUNT" in problem.response.text()
    # A POST refused for its header leaves its connection unusable (the server answers before
    # reading the body): it gets a client of its own.
    with make_client(TEST_KEY) as once:
        not_found(lambda: once.customers.create({"name": unique("nowhere")}, **inside("acc_doesnotexist")))


def test_a_connected_account_bills_with_its_own_assets_products_and_stats(
    client, live_client, wallet, studio, hooks, destinations, receiver
):
    at = inside(studio)
    vendors = client.vendors.vendors_ops
    # The same asset code, product code and customer external id in the platform and in the
    # connected account are unrelated things with their own rates and prices.
    code, product_code, external_id = unique_code("TOK"), unique("renders"), unique("fan")
    client.assets.create(
        {"code": code, "name": "Platform tokens", "precision": 2, "rates": [{"source": "USD", "rate": 0.1}]}
    )
    studio_asset = models.CreateAssetRequest(
        code=code,
        name="Studio tokens",
        precision=2,
        rates=[models.StartingExchangeRate(source="USD", rate=Decimal("0.25"))],
    )
    assert client.assets.create(studio_asset, **at).code == code
    assert client.assets.get(code).name == "Platform tokens"
    assert client.assets.get(code, **at).name == "Studio tokens"
    assert raw_of(client.assets.quote, code, {"source": "USD", "amount": 10})["destination_amount"] == 100
    assert raw_of(client.assets.quote, code, {"source": "USD", "amount": 10}, **at)["destination_amount"] == 40

    def product(unit_price):
        price = {
            "name": "Render",
            "type": "usage_based",
            "billing_model": {"type": "real_time"},
            "usage_calculation": {"event_type": "render", "usage_type": "unit"},
            "pricing": [{"asset": code, "values": [{"unit_price": unit_price}]}],
        }
        return {"name": "Renders", "code": product_code, "prices": [price], "publish": True}

    platform_product = client.products.create(product(1))
    studio_product = client.products.create(product(2), **at)
    assert studio_product.id != platform_product.id
    subscribed = {"subscriptions": [{"products": [{"code": product_code}]}], "external_id": external_id}
    customer = client.customers.create(dict(subscribed, name="Studio fan"), **at).id
    platform_customer = client.customers.create(dict(subscribed, name="Platform fan")).id

    funded = {"transaction_id": unique("fund"), "asset": code, "amount": 12.34, "reason": "external_topup"}
    wallet.create_adjustment(customer, funded, **at)
    gpu = vendors.create_vendor({"name": "GPU Cloud", "external_id": unique("gpu")}, **at)
    render_ids = [unique("render") for _ in range(3)]
    costs = [
        [{"id": unique("cost"), "vendor_id": gpu.id, "amount": amount, "category": "gpu"}]
        for amount in (0.03, 0.02, 0.01)
    ]
    events = [
        {"id": event_id, "event_type": "render", "occurred_at": now().isoformat(), "costs": cost}
        for event_id, cost in zip(render_ids, costs)
    ]
    assert client.events.send_usage({"customer_id": customer, "events": events}, **at) is None

    # Three renders at the studio's 2 tokens each: 12.34 - 6 = 6.34.
    _, raw_account, _ = with_raw(wallet.get_account, customer, "default:" + code, **at)
    assert raw_account["available"] == Decimal("6.34")
    fetched, raw_event, _ = with_raw(client.events.get, render_ids[0], **at)
    assert fetched.customer_id == customer
    assert [(fee["amount"], fee["unit_price"], fee["product_id"]) for fee in raw_event["fees"]] == [
        (2, 2, studio_product.id)
    ]
    # 6 tokens at the studio's 0.25 USD are 1.50 USD of revenue; 0.06 of costs leaves 1.44, 96%.
    expected = {
        "gross_revenue": Decimal("1.5"),
        "total_costs": Decimal("0.06"),
        "net_revenue": Decimal("1.44"),
        "margin": 96,
        "currency": "USD",
    }
    stats = raw_of(client.customers.get_stats, customer, **at)
    assert {key: stats[key] for key in expected} == expected
    page, raw_page, _ = with_raw(client.customers.list_stats, **at)
    assert isinstance(page, models.CustomerStatsPage)
    assert page.total_count == 1 and [item.id for item in page.items_property] == [customer]
    assert {key: raw_page["items"][0]["stats"][key] for key in expected} == expected
    # The connected account has one customer, so its summary is that customer's stats.
    assert {key: raw_page["summary"][key] for key in expected} == expected
    assert raw_of(vendors.get_vendor_stats, gpu.id, **at)["total_costs"] == Decimal("0.06")
    assert [item.id for item in vendors.list_vendors(**at).items_property] == [gpu.id]

    # The platform sees nothing of the connected account's, and the account nothing of its.
    not_found(lambda: client.customers.get(customer))
    not_found(lambda: client.customers.get(platform_customer, **at))
    not_found(lambda: wallet.get_customer_wallet(customer))
    not_found(lambda: wallet.get_transaction(customer, funded["transaction_id"]))
    not_found(lambda: client.events.get(render_ids[0]))
    not_found(lambda: vendors.get_vendor(gpu.id))
    not_found(lambda: live_client.customers.get(customer, **at))
    assert [item.id for item in client.customers.list(external_id=external_id).items_property] == [platform_customer]
    assert [item.id for item in client.customers.list(external_id=external_id, **at).items_property] == [customer]
    assert client.products.get(studio_product.id, **at).code == product_code
    not_found(lambda: client.products.get(studio_product.id))
    for product_id, sdk_call, subscriber in (
        (platform_product.id, {}, platform_customer),
        (studio_product.id, at, customer),
    ):
        subscribers = client.products.get_subscribers(product_id, **sdk_call).items_property
        assert [item.customer_id for item in subscribers] == [subscriber]
    # The platform's customer of the same external id has its own, empty account in its own asset.
    assert raw_of(wallet.get_customer_wallet, platform_customer)["accounts"][0]["available"] == 0
    offset, platform_ids = 0, set()
    while True:
        platform_page = client.customers.list_stats(limit=100, offset=offset)
        platform_ids |= {item.id for item in platform_page.items_property}
        offset += 100
        if offset >= platform_page.total_count:
            break
    assert platform_customer in platform_ids and customer not in platform_ids

    # The connected account's changes go to `connect` destinations only, naming the account.
    (own_id, _), (connect_id, connect_secret) = destinations["own"], destinations["connect"]
    theirs = [
        item
        for item in logged(hooks, connect_id)
        if customer in (item["data"].get("id"), item["data"].get("customer_id"))
    ]
    assert [item["topic"] for item in theirs].count("customer.created") == 1
    transactions = {item["data"]["id"]: item for item in theirs if item["topic"] == "transaction.completed"}
    assert funded["transaction_id"] in transactions and len(transactions) == 4
    assert sorted(item["data"]["amount"] for item in transactions.values()) == [-2, -2, -2, Decimal("12.34")]
    mine = logged(hooks, own_id)
    assert not [item for item in mine if customer in json.dumps(item["data"], default=str)]
    assert [item for item in mine if item["data"].get("id") == platform_customer]

    logged_top_up = transactions[funded["transaction_id"]]
    headers, body, envelope = receiver.event("connect", logged_top_up["id"])
    assert signed_by(connect_secret, headers, body)
    assert (envelope["type"], envelope["account_id"], envelope["live_mode"]) == ("transaction.completed", studio, False)
    assert envelope["data"]["amount"] == Decimal("12.34")
    assert envelope["data"] == logged_top_up["data"]


# Webhook destinations, test sends and the delivery log


def test_webhook_destinations_are_made_read_listed_changed_tested_and_deleted(
    client, live_client, hooks, receiver, studio, destinations
):
    request = models.CreateWebhookDestinationRequest(url=receiver.url("lifecycle"), topics=["customer.created"])
    created, raw, status = with_raw(hooks.create_webhook_destination, request)
    assert status == 201
    assert isinstance(created, models.CreateWebhookDestinationResponse)
    assert created.id.startswith("whd_") and raw["id"] == created.id
    assert re.fullmatch(r"whsec_[0-9a-f]{64}", created.secret)
    assert isinstance(created.created_at, datetime.datetime)

    destination, raw_destination, _ = with_raw(hooks.get_webhook_destination, created.id)
    assert isinstance(destination, models.WebhookDestination)
    assert (destination.id, destination.url, destination.topics, destination.connect, destination.enabled) == (
        created.id,
        receiver.url("lifecycle"),
        ["customer.created"],
        False,
        True,
    )
    assert destination.secret == created.secret
    assert destination.created_at == created.created_at == destination.updated_at

    listed, raw_list, _ = with_raw(hooks.list_webhook_destinations)
    assert isinstance(listed, models.ItemsWebhookDestinationWithoutSecret)
    assert listed.total_count == len(listed.items_property)
    ids = [item.id for item in listed.items_property]
    assert {created.id, destinations["own"][0], destinations["connect"][0]} <= set(ids)
    assert all(isinstance(item, models.WebhookDestinationWithoutSecret) for item in listed.items_property)
    assert not [item for item in raw_list["items"] if "secret" in item], "a list never shows secrets"
    assert [item.id for item in hooks.list_webhook_destinations(connect=True).items_property] == [
        destinations["connect"][0]
    ]
    assert created.id in [
        item.id for item in hooks.list_webhook_destinations(connect=False, enabled=True).items_property
    ]
    assert created.id not in [item.id for item in hooks.list_webhook_destinations(enabled=False).items_property]

    change = models.UpdateWebhookDestinationRequest(topics=["transaction.completed", "customer.created"], enabled=False)
    updated, _, status = with_raw(hooks.update_webhook_destination, created.id, change)
    assert status == 200
    assert isinstance(updated, models.WebhookDestination)
    assert (updated.topics, updated.enabled, updated.secret) == (
        ["transaction.completed", "customer.created"],
        False,
        created.secret,
    )
    assert updated.updated_at > updated.created_at
    assert [item.id for item in hooks.list_webhook_destinations(enabled=False).items_property] == [created.id]

    # A test send to one destination goes even while it is disabled; one to all goes to every
    # enabled destination subscribed to the topic: `own`, not this one.
    sent, raw_sent, status = with_raw(hooks.test_webhook_destination, created.id, "transaction.completed", None)
    assert status == 202
    assert isinstance(sent, models.TestWebhookResponse) and sent.id.startswith("evt_")
    headers, body, envelope = receiver.event("lifecycle", sent.id)
    assert signed_by(created.secret, headers, body)
    assert (envelope["type"], envelope["live_mode"]) == ("transaction.completed", False)
    assert "account_id" not in envelope
    assert isinstance(envelope["data"]["amount"], (int, Decimal))
    to_all = hooks.test_webhook_destinations("customer.created", None)
    own_id, own_secret = destinations["own"]
    headers, body, envelope = receiver.event("own", to_all.id)
    assert signed_by(own_secret, headers, body) and envelope["type"] == "customer.created"
    assert to_all.id not in [item["id"] for item in logged(hooks, created.id)]
    assert to_all.id not in [item["id"] for item in logged(hooks, destinations["connect"][0])]
    # /webhooks acts for the platform whatever account a call names.
    named = hooks.test_webhook_destinations("customer.created", None, **inside(studio))
    _, _, envelope = receiver.event("own", named.id)
    assert "account_id" not in envelope
    assert named.id not in [item["id"] for item in logged(hooks, destinations["connect"][0])]

    # The log shows what was sent, exactly as sent, once it is delivered.
    def delivered():
        items = logged(hooks, created.id, status=models.WebhookEventStatus.SUCCESS)
        return [item for item in items if item["id"] == sent.id]

    [item] = eventually("the test event logged as delivered", delivered)
    _, _, envelope = receiver.event("lifecycle", sent.id)
    assert (item["destination_id"], item["topic"], item["data"]) == (
        created.id,
        "transaction.completed",
        envelope["data"],
    )
    assert item["metadata"]["attempts"] == 1 and item["metadata"]["last_status_code"] == 200
    page, raw_page, _ = with_raw(hooks.list_events, destination_id=created.id)
    assert isinstance(page, models.CursorPageWebhookEventListItem)
    assert page.pagination.limit == 20
    [model] = [model for model in page.models if model.id == sent.id]
    assert isinstance(model, models.WebhookEventListItem)
    assert isinstance(model.time, datetime.datetime) and isinstance(model.successful_at, datetime.datetime)
    assert model.failed_at is None
    assert not logged(hooks, created.id, status=models.WebhookEventStatus.FAILED)
    assert [item["id"] for item in logged(hooks, created.id, time_gte=model.time, time_lte=model.time)] == [sent.id]
    assert not logged(hooks, created.id, time_gte=model.time + datetime.timedelta(seconds=1))

    # Cursors page through the log, newest first, and back.
    hooks.update_webhook_destination(created.id, {"enabled": True, "url": receiver.url("lifecycle")})
    client.customers.create({"name": unique("hooked")})
    second = hooks.test_webhook_destination(created.id, "customer.created", None)
    eventually("three events logged", lambda: len(logged(hooks, created.id)) == 3)
    newest = hooks.list_events(destination_id=created.id, limit=1)
    assert [model.id for model in newest.models] == [second.id] and newest.pagination.prev is None
    middle = hooks.list_events(destination_id=created.id, limit=1, next=newest.pagination.next)
    oldest = hooks.list_events(destination_id=created.id, limit=1, next=middle.pagination.next)
    assert [model.id for model in oldest.models] == [sent.id] and oldest.pagination.next is None
    back = hooks.list_events(destination_id=created.id, limit=1, prev=oldest.pagination.prev)
    assert [model.id for model in back.models] == [model.id for model in middle.models]
    assert middle.models[0].topic == "customer.created"

    with pytest.raises(HttpResponseError) as invalid:
        hooks.test_webhook_destination(created.id, "no.such.topic", None)
    assert invalid.value.status_code == 422
    with pytest.raises(HttpResponseError) as invalid:
        hooks.update_webhook_destination(created.id, {"topics": ["no.such.topic"]})
    assert invalid.value.status_code == 422
    assert isinstance(invalid.value.model, models.ValidationProblem)
    not_found(lambda: live_client.webhooks.webhooks.get_webhook_destination(created.id))

    _, raw_deleted, status = with_raw(hooks.delete_webhook_destination, created.id)
    assert (raw_deleted, status) == (None, 204)
    not_found(lambda: hooks.get_webhook_destination(created.id))
    not_found(lambda: hooks.delete_webhook_destination(created.id))
    not_found(lambda: hooks.test_webhook_destination(created.id, "customer.created", None))
    assert created.id not in [item.id for item in hooks.list_webhook_destinations().items_property]
    # Its log stays listable.
    assert len(logged(hooks, created.id)) == 3


def test_connected_test_sends_go_to_connect_destinations_naming_the_account(
    live_client, hooks, receiver, studio, destinations
):
    (connect_id, connect_secret), (own_id, _) = destinations["connect"], destinations["own"]
    sent, raw, status = with_raw(
        hooks.test_connected_webhook_destination, connect_id, "transaction.completed", studio, None
    )
    assert status == 202
    assert isinstance(sent, models.TestWebhookResponse) and raw == {"id": sent.id}
    headers, body, envelope = receiver.event("connect", sent.id)
    assert signed_by(connect_secret, headers, body)
    assert (envelope["type"], envelope["account_id"], envelope["live_mode"]) == ("transaction.completed", studio, False)

    to_all, _, status = with_raw(hooks.test_connected_webhook_destinations, "customer.created", studio, None)
    assert status == 202
    headers, body, envelope = receiver.event("connect", to_all.id)
    assert signed_by(connect_secret, headers, body)
    assert (envelope["type"], envelope["account_id"]) == ("customer.created", studio)
    connect_log = {item["id"]: item for item in logged(hooks, connect_id)}
    assert connect_log[to_all.id]["data"] == envelope["data"]
    assert sent.id in connect_log
    # The platform's own destination subscribes to customer.created, but not to connected accounts.
    assert to_all.id not in [item["id"] for item in logged(hooks, own_id)]

    not_found(lambda: hooks.test_connected_webhook_destinations("customer.created", "acc_doesnotexist", None))
    not_found(
        lambda: hooks.test_connected_webhook_destination(connect_id, "customer.created", "acc_doesnotexist", None)
    )
    not_found(
        lambda: live_client.webhooks.webhooks.test_connected_webhook_destinations("customer.created", studio, None)
    )
    with pytest.raises(HttpResponseError) as invalid:
        hooks.test_connected_webhook_destinations("no.such.topic", studio, None)
    assert invalid.value.status_code == 422


# The billing portal


def open_portal(link):
    """Follows a portal link as a browser would (keeping its cookie): (final URL, page)."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    with opener.open(link, timeout=30) as response:
        return response.geturl(), response.read().decode()


def test_portal_sessions_open_the_portal_of_the_platform_or_of_a_connected_account(client, wallet, studio):
    at = inside(studio)
    code = unique_code("CRD")
    client.assets.create(
        {"code": code, "name": "Studio credits", "precision": 2, "rates": [{"source": "USD", "rate": 0.5}]}, **at
    )
    customer = client.customers.create({"name": "Portal fan"}, **at).id
    wallet.create_adjustment(
        customer, {"transaction_id": unique("fund"), "asset": code, "amount": 7.25, "reason": "gift"}, **at
    )
    wallet.create_charge(customer, {"transaction_id": unique("charge"), "asset": code, "amount": 0.5}, **at)
    assert raw_of(wallet.get_account, customer, "default:" + code, **at)["available"] == Decimal("6.75")

    request = models.CreateSessionRequest(
        customer_id=customer, return_url="https://studio.example/back", failure_url="https://studio.example/failed"
    )
    before = now()
    session, raw, status = with_raw(client.billing_portal.create_portal_session, request, **at)
    assert status == 200
    assert isinstance(session, models.CreateSessionResponse)
    assert session.redirect_url.startswith(URL + "/portal/enter?token=")
    assert raw["redirect_url"] == session.redirect_url
    assert datetime.timedelta(minutes=9) < session.expires_at - before <= datetime.timedelta(minutes=11)
    url, page = open_portal(session.redirect_url)
    assert url.startswith(URL + "/portal")
    assert "Glitch Studio" in page and "Studio credits" in page and "6.75" in page
    assert "https://studio.example/back" in page

    # The platform has no such customer: its own session for it is refused.
    with pytest.raises(HttpResponseError) as refused:
        client.billing_portal.create_portal_session(request)
    assert refused.value.status_code == 422

    platform_customer = client.customers.create({"name": "Platform portal fan"}).id
    own = client.billing_portal.create_portal_session(
        {
            "customer_id": platform_customer,
            "return_url": "https://platform.example/back",
            "failure_url": "https://platform.example/failed",
        }
    )
    _, page = open_portal(own.redirect_url)
    assert "Glitch Studio" not in page and "Studio credits" not in page


# Every operation of the SDK is driven by this suite


def sdk_operations():
    """Every public method of the SDK's operation classes: "Group.method"."""
    found = set()
    for class_name, klass in vars(_operations).items():
        if inspect.isclass(klass) and class_name.endswith("Operations"):
            group = class_name[: -len("Operations")]
            found |= {
                f"{group}.{name}"
                for name, member in vars(klass).items()
                if inspect.isfunction(member) and not name.startswith("_")
            }
    return found


def test_the_operation_list_is_the_sdks():
    assert len(OPERATIONS) == len(set(OPERATIONS)) == 54
    assert set(OPERATIONS) == sdk_operations()


@pytest.mark.runs_after_all_sdk_tests
def test_every_sdk_operation_was_called(request, sdk_calls):
    """Runs after every other test of the directory (conftest.py moves it last)."""
    directory = Path(__file__).parent
    files = {path.name for path in directory.glob("test_*.py")}
    ran = {item.path.name for item in request.session.items}
    option = request.config.option
    if files - ran or option.keyword or option.markexpr:
        pytest.skip("checks a run of the whole tests/sdk directory")
    missing = [name for name in OPERATIONS if name not in sdk_calls]
    assert not missing, f"no test calls these SDK operations: {missing}"
