"""The owner's dashboard (``wallet.dashboard``): credentials, CSRF, no secrets on any page, and
the live page in a real browser.

The browser test serves the wallet app and the gateway harness with uvicorn on loopback and
drives Debian's Chromium with Playwright. An agent pays through the wallet (``WalletAuth``);
the paid request is held at the gateway's door until the page shows the payment
``authorized``, then let through, and the page turns it ``settled`` when the wallet books the
receipt. The owner engages the kill switch on the page and the next spend is denied.
Screenshots land in ``test-artifacts/dashboard/`` (ignored by git).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from pathlib import Path
from typing import Any, AsyncIterator

import httpx
import pytest
import uvicorn

from payer.errors import PolicyDenied
from payer.remote import WalletAuth
from wallet import dashboard
from wallet.app import create_app
from wallet.cards import CardIssuer
from wallet.council import Council, OfflineJudge
from wallet.db import Database
from wallet.keys import session_key_aad
from wallet.policy import Rules
from wallet.service import PaymentStatus, WalletService, wallet_intents
from wallet.settlements import SettlementWatcher

from test_wallet_chain import ESCROW, chain_wallet, settle  # noqa: E402
from test_wallet_remote import GATEWAY, OWNER_TOKEN, agent_client, funded_agent, new_service, wallet_auth  # noqa: E402
from gateway_fixtures import FORECAST_PRICE, OFFLINE_DEPLOYMENT, InProcessGateway, StaticChainReader  # noqa: E402

CHROMIUM = Path("/usr/lib/chromium/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"
WALLET = "http://wallet.test"
ACTIONS = ["/dashboard/kill-switch/engage", "/dashboard/kill-switch/release", "/dashboard/intents/int_x/approve",
           "/dashboard/intents/int_x/deny", "/dashboard/reviews/rev_x/approve", "/dashboard/reviews/rev_x/deny",
           "/dashboard/cards/card_x/cancel", "/dashboard/card-reviews/crev_x/approve", "/dashboard/logout"]
FRAGMENTS = ["controls", "balances", "intents", "reviews", "payments", "decisions", "cards", "ledger", "spend"]


@pytest.fixture
async def world(wallet_db: Database, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    """The wallet (service with a council, card issuer, app) and the gateway, in process."""
    service = new_service(wallet_db, tmp_path)
    service.council = Council(OfflineJudge())
    cards = CardIssuer(service)
    gateway = InProcessGateway(OFFLINE_DEPLOYMENT, ":memory:", reader=StaticChainReader())
    app = create_app(service, owner_token=OWNER_TOKEN, cards=cards)
    yield {"service": service, "cards": cards, "gateway": gateway, "app": app}
    await gateway.aclose()
    await service.webhooks.aclose()


def browser_client(world: dict[str, Any]) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=world["app"]), base_url=WALLET)


def hidden_csrf(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([0-9a-f]+)"', html)
    assert found, html
    return found.group(1)


async def logged_in(client: httpx.AsyncClient) -> str:
    """Log ``client`` in through the form; the page's CSRF token."""
    form = await client.get("/dashboard/login")
    response = await client.post("/dashboard/login", data={"csrf_token": hidden_csrf(form.text), "token": OWNER_TOKEN})
    assert response.status_code == 303 and response.headers["location"] == "/dashboard/", response.text
    page = await client.get("/dashboard/")
    assert page.status_code == 200
    return hidden_csrf(page.text)


# ---------------------------------------------------------------------------------------------
# Credentials and CSRF
# ---------------------------------------------------------------------------------------------


async def test_the_login_sets_an_httponly_samesite_strict_session_cookie(world):
    async with browser_client(world) as client:
        assert (await client.get("/dashboard/")).headers["location"] == "/dashboard/login"
        form = await client.get("/dashboard/login")
        response = await client.post("/dashboard/login",
                                     data={"csrf_token": hidden_csrf(form.text), "token": OWNER_TOKEN})
        cookie = response.headers["set-cookie"]
        assert cookie.startswith(dashboard.SESSION_COOKIE + "=") and "HttpOnly" in cookie
        assert "SameSite=strict" in cookie and "Path=/dashboard" in cookie
        page = await client.get("/dashboard/")
    assert page.status_code == 200 and "sse-connect=\"/dashboard/events\"" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert OWNER_TOKEN not in cookie


async def test_a_wrong_owner_token_or_a_missing_login_csrf_token_logs_nobody_in(world):
    async with browser_client(world) as client:
        form = await client.get("/dashboard/login")
        wrong = await client.post("/dashboard/login", data={"csrf_token": hidden_csrf(form.text), "token": "x" * 40})
        assert wrong.status_code == 401 and "not the owner token" in wrong.text
        no_csrf = await client.post("/dashboard/login", data={"token": OWNER_TOKEN})
        assert no_csrf.status_code == 403
        assert "set-cookie" not in no_csrf.headers
        assert (await client.get("/dashboard/fragments/payments")).status_code == 401


async def test_every_action_fragment_and_the_event_stream_need_the_owner_credential(world):
    agent_key = (await world["service"].add_agent("agent")).api_key
    async with browser_client(world) as client:
        for path in ACTIONS:
            assert (await client.post(path, data={"csrf_token": "0" * 64})).status_code == 401, path
            wrong = {"Authorization": f"Bearer {agent_key}", dashboard.CSRF_HEADER: "0" * 64}
            assert (await client.post(path, headers=wrong)).status_code == 401, path
        for name in FRAGMENTS:
            assert (await client.get(f"/dashboard/fragments/{name}")).status_code == 401, name
        assert (await client.get("/dashboard/events")).status_code == 401
        client.cookies.set(dashboard.SESSION_COOKIE, "nonce.99999999999." + "0" * 64)
        assert (await client.get("/dashboard/fragments/payments")).status_code == 401
    assert not (await world["service"].kill_switch()).engaged


async def test_every_action_needs_the_session_csrf_token(world):
    service: WalletService = world["service"]
    async with browser_client(world) as client:
        csrf = await logged_in(client)
        for path in ACTIONS:
            assert (await client.post(path)).status_code == 403, path
            assert (await client.post(path, data={"csrf_token": "0" * 64})).status_code == 403, path
            assert (await client.post(path, headers={dashboard.CSRF_HEADER: csrf[:-1] + ("1" if csrf[-1] == "0" else "0")})).status_code == 403
        assert not (await service.kill_switch()).engaged
        engaged = await client.post("/dashboard/kill-switch/engage", headers={dashboard.CSRF_HEADER: csrf,
                                                                               "HX-Request": "true"})
        assert engaged.status_code == 200 and "kill switch engaged" in engaged.text
        assert (await service.kill_switch()).engaged
        released = await client.post("/dashboard/kill-switch/release", data={"csrf_token": csrf})
        assert released.status_code == 303 and not (await service.kill_switch()).engaged
        # another login is another session, with its own token
        async with browser_client(world) as other:
            other_csrf = await logged_in(other)
        assert other_csrf != csrf
        assert (await client.post("/dashboard/kill-switch/engage", data={"csrf_token": other_csrf})).status_code == 403


async def test_the_bearer_header_opens_the_dashboard_but_posts_still_need_the_csrf_token(world):
    service: WalletService = world["service"]
    bearer = {"Authorization": f"Bearer {OWNER_TOKEN}"}
    async with browser_client(world) as client:
        page = await client.get("/dashboard/", headers=bearer)
        assert page.status_code == 200
        assert (await client.post("/dashboard/kill-switch/engage", headers=bearer)).status_code == 403
        assert not (await service.kill_switch()).engaged
        ok = await client.post("/dashboard/kill-switch/engage", headers=bearer, data={"csrf_token": hidden_csrf(page.text)})
        assert ok.status_code == 303 and (await service.kill_switch()).engaged


async def test_the_owner_approves_and_denies_intents_and_cancels_cards(world):
    service: WalletService = world["service"]
    agent_id, _key = await funded_agent(service)
    first = await service.draft_intent(agent_id, budget=50_000, purpose="more", duration_seconds=600, per_payment_cap=5_000)
    second = await service.draft_intent(agent_id, budget=50_000, purpose="less", duration_seconds=600, per_payment_cap=5_000)
    active = next(i for i in await service.intents(agent_id=agent_id) if i.status.value == "active")
    minted = await world["cards"].mint(agent_id, intent_id=active.id, amount=2_000)
    htmx = {"HX-Request": "true"}
    async with browser_client(world) as client:
        csrf = await logged_in(client)
        htmx[dashboard.CSRF_HEADER] = csrf
        assert (await client.post(f"/dashboard/intents/{first.id}/approve", headers=htmx)).status_code == 200
        assert (await client.post(f"/dashboard/intents/{second.id}/deny", headers=htmx)).status_code == 200
        assert (await client.post(f"/dashboard/cards/{minted.card.id}/cancel", headers=htmx)).status_code == 200
        again = await client.post(f"/dashboard/cards/{minted.card.id}/cancel", headers=htmx)
        assert again.status_code == 409 and "cancelled" in again.text
        assert (await client.post(f"/dashboard/intents/{first.id}/maybe", headers=htmx)).status_code == 409
        cards = await client.get("/dashboard/fragments/cards")
    assert (await service.intent(first.id)).status.value == "active"
    assert (await service.intent(second.id)).status.value == "denied"
    assert f'data-card="{minted.card.id}" data-status="cancelled"' in cards.text


# ---------------------------------------------------------------------------------------------
# What the pages show, and never show
# ---------------------------------------------------------------------------------------------


async def test_the_pages_show_the_money_and_the_votes_but_no_secret(world):
    service: WalletService = world["service"]
    agent_id, api_key = await funded_agent(service, hosts=[], purpose="weather forecasts for the trip")
    intent = (await service.intents(agent_id=agent_id))[0]
    minted = await world["cards"].mint(agent_id, intent_id=intent.id, amount=3_000, merchant_id="shop-1")
    assert minted.secrets is not None
    async with wallet_auth(world, api_key) as auth, agent_client(world, auth) as agent:
        assert (await agent.get("/v1/forecast/paris")).status_code == 200
        await service.set_rules(Rules(review_above=FORECAST_PRICE - 1), agent_id=agent_id)
        with contextlib.suppress(PolicyDenied):  # the council decides the review at once, either way
            await agent.get("/v1/forecast/rome")
    in_review = await world["cards"].mint(agent_id, intent_id=intent.id, amount=4_000)
    async with service.db.snapshot() as conn:
        sealed = (await conn.execute(wallet_intents.select().where(wallet_intents.c.id == intent.id))).one()
    session_key = service.sealer.open_session_key(
        sealed.sealed_session_key, aad=session_key_aad(intent_id=intent.id, agent_id=agent_id))
    payments = await service.payments()
    secrets_ = {
        "api key": api_key, "owner token": OWNER_TOKEN, "card number": minted.secrets.number,
        "session key": session_key.to_hex()[2:], "session key (decimal)": str(session_key.secret),
        "owner key": service.owner.account.key.hex().removeprefix("0x"),
        **{f"payment header {p.payment_id}": p.header for p in payments},
    }
    async with browser_client(world) as client:
        csrf = await logged_in(client)
        pages = {"page": (await client.get("/dashboard/")).text}
        for name in FRAGMENTS:
            response = await client.get(f"/dashboard/fragments/{name}")
            assert response.status_code == 200, (name, response.text)
            pages[name] = response.text
    for where, html in pages.items():
        for what, value in secrets_.items():
            assert value not in html, f"{what} on {where}"
        assert "cvv" not in html.lower() and minted.secrets.number[:6] not in html, where
    assert csrf in pages["controls"]
    assert payments and all(p.status is PaymentStatus.SETTLED for p in payments)
    assert all(f'data-payment="{p.payment_id}" data-status="settled"' in pages["payments"] for p in payments)
    assert f"→ gateway.test −{dashboard.usd(sum(p.amount for p in payments))}" in pages["spend"]
    assert f"→ card {minted.card.id}" not in pages["spend"] and "→ card 0x" in pages["spend"]
    assert 'data-rule="review_above"' in pages["decisions"] or 'data-rule="council"' in pages["decisions"]
    assert pages["reviews"].count("data-judge=") == 5 and "risk" in pages["reviews"]
    assert f'data-card-review="{in_review.review_id}"' in pages["reviews"]
    assert "•••• " + minted.secrets.number[-4:] in pages["cards"]
    assert 'data-kind="settle"' in pages["ledger"] and 'data-balance="settled"' in pages["balances"]


def test_amounts_read_as_dollars():
    assert dashboard.usd(140_000) == "$0.14"
    assert dashboard.usd(1_000) == "$0.001"
    assert dashboard.usd(12_345_678_901) == "$12,345.678901"
    assert dashboard.usd(0) == "$0.00"


# ---------------------------------------------------------------------------------------------
# The live page in a real browser
# ---------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    """``app`` served by uvicorn on a loopback port, for as long as the block runs: its base URL."""
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=1))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


class HeldAtTheDoor(httpx.AsyncBaseTransport):
    """Real HTTP to the gateway; a request carrying a payment waits for ``open`` first."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.open = asyncio.Event()
        self.waiting = asyncio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if "payment-signature" in request.headers or "x-payment" in request.headers:
            self.waiting.set()
            await self.open.wait()
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def logged_in_page(playwright: Any, wallet_url: str) -> tuple[Any, Any]:
    """Chromium logged in to the wallet's empty dashboard, its event stream live, and marked
    (``window.notReloaded``) so a test can show that nothing reloaded it: ``(browser, page)``."""
    from playwright.async_api import expect

    browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
    page = await browser.new_page(viewport={"width": 1400, "height": 1800})
    await page.goto(f"{wallet_url}/dashboard/")
    await page.fill("#token", OWNER_TOKEN)
    await page.click("button[type=submit]")
    await expect(page.locator("#payments")).to_contain_text("No payments yet")
    await expect(page.locator("#live")).to_have_class(re.compile(r"\bon\b"))
    await page.evaluate("window.notReloaded = true")
    return browser, page


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium; make test does)")
async def test_the_page_shows_a_payment_live_and_the_kill_switch_stops_the_next_spend(wallet_db, tmp_path):
    from playwright.async_api import async_playwright, expect

    service = new_service(wallet_db, tmp_path)
    gateway = InProcessGateway(OFFLINE_DEPLOYMENT, ":memory:", reader=StaticChainReader())
    _agent_id, api_key = await funded_agent(service)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    door = HeldAtTheDoor()
    async with (
        serving(create_app(service, owner_token=OWNER_TOKEN)) as wallet_url,
        serving(gateway.app) as gateway_url,
        async_playwright() as playwright,
    ):
        browser, page = await logged_in_page(playwright, wallet_url)

        auth = WalletAuth(wallet_url, api_key, backoff=0)
        async with auth, httpx.AsyncClient(base_url=gateway_url, auth=auth, transport=door) as agent:
            paid = asyncio.create_task(agent.get("/v1/forecast/paris"))
            await asyncio.wait_for(door.waiting.wait(), 10)
            row = page.locator("#payments tr[data-payment]")
            await expect(row).to_have_attribute("data-status", PaymentStatus.AUTHORIZED.value)
            await page.screenshot(path=ARTIFACTS / "1-authorized.png", full_page=True)
            door.open.set()
            assert (await paid).status_code == 200
            await expect(row).to_have_attribute("data-status", PaymentStatus.SETTLED.value)
            await expect(page.locator("#spend li[data-destination='127.0.0.1']")).to_be_visible()
            await page.screenshot(path=ARTIFACTS / "2-settled.png", full_page=True)

            await page.click("text=Engage kill switch")
            await expect(page.locator("[data-kill-switch]")).to_have_attribute("data-kill-switch", "engaged")
            with pytest.raises(PolicyDenied) as denied:
                await agent.get("/v1/forecast/rome")
            assert denied.value.rule == "kill_switch_global"
            await expect(page.locator("#decisions tr[data-rule='kill_switch_global']")).to_have_count(1)
            await page.screenshot(path=ARTIFACTS / "3-kill-switch.png", full_page=True)
        assert await page.evaluate("window.notReloaded") is True
        assert await row.count() == 1 and len(gateway.handled) == 1
        await browser.close()
    await door.aclose()
    await gateway.aclose()
    await service.webhooks.aclose()


@pytest.mark.chain
@pytest.mark.circuit
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium; make test does)")
async def test_a_paid_call_turns_settled_on_the_page_when_its_batch_lands_on_chain(
    wallet_db, tmp_path, deployment, make_payer, small_artifacts, serve, served_here, store_path, payee, processor_key
):
    """Anvil, the example payee service and our processor proving Batch(4,2,2): the row appears
    ``accepted`` when the wallet books the receipt and turns ``settled`` with the batch's
    transaction, block, proof seconds and gas when the processor's batch lands; no reload."""
    from playwright.async_api import async_playwright, expect

    from examples.payee_service import create_app as create_payee_app

    payer = make_payer(escrow=ESCROW)
    wallet = chain_wallet(wallet_db, tmp_path, deployment, payer, processor_key)
    service = wallet.service
    await service.record_deposit(ESCROW)
    agent_id, api_key = await service.add_agent("researcher")
    intent = await service.draft_intent(agent_id, budget=100_000, purpose="forecasts", duration_seconds=3600,
                                        per_payment_cap=5_000, hosts=["127.0.0.1"])
    await service.approve_intent(intent.id)
    gateway = serve(create_payee_app(deployment, payee, store_path, processor=wallet.processor))
    watcher = SettlementWatcher(service, interval=0.2, max_interval=0.5)
    wallet_url = await served_here(create_app(service, owner_token=OWNER_TOKEN, settlements=watcher))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        async with async_playwright() as playwright:
            browser, page = await logged_in_page(playwright, wallet_url)

            auth = WalletAuth(wallet_url, api_key, backoff=0)
            async with auth, httpx.AsyncClient(base_url=gateway.url, auth=auth, timeout=30) as agent:
                assert (await agent.get("/v1/forecast/paris")).status_code == 200
            row = page.locator("#payments tr[data-payment]")
            await expect(row).to_have_attribute("data-stage", "accepted")
            await page.screenshot(path=ARTIFACTS / "4-accepted.png", full_page=True)

            (batch,) = await settle(deployment, store_path, processor_key, small_artifacts)
            await expect(row).to_have_attribute("data-stage", "settled", timeout=15_000)
            await expect(row.locator("code.tx")).to_have_attribute("title", batch.tx_hash)
            await expect(row.locator("td.gas")).to_have_text(f"{batch.gas_used:,}")
            await expect(row.locator("td.prove")).to_have_text(f"{batch.prove_seconds:.1f} s")
            block = int((await row.locator("td.block").inner_text()).strip())
            assert block == payer.token.w3.eth.get_transaction_receipt(batch.tx_hash)["blockNumber"] > 0
            panel = page.locator(f"#payments tr[data-batch='{batch.batch_id}']")
            await expect(panel).to_have_attribute("data-status", "settled")
            await page.screenshot(path=ARTIFACTS / "5-settled-on-chain.png", full_page=True)
            assert await page.evaluate("window.notReloaded") is True
            await browser.close()
    finally:
        await watcher.aclose()
        await service.webhooks.aclose()
