"""``python -m wallet``: serve the co-wallet's API, or act as its owner from the shell.

    python -m wallet init                          # schema + owner keystore; prints the owner address
    python -m wallet serve --host 127.0.0.1 --port 8080 [--settlement-interval SECONDS]
    python -m wallet add-agent NAME                # prints the agent id and its API key, once
    python -m wallet deposit AMOUNT [--record-only]  # fund the escrow (base units) and book it
    python -m wallet rotate-key AGENT_ID [--grace SECONDS]   # prints the new API key, once
    python -m wallet approve INTENT_ID
    python -m wallet deny INTENT_ID [--reason TEXT]
    python -m wallet register INTENT_ID            # retry a failed on-chain registration
    python -m wallet kill-switch on|off [--agent ID] [--reason TEXT]
    python -m wallet audit verify                  # exit status 1 on a broken chain
    python -m wallet reconcile [--settle-from-chain] [--json]   # exit status 1 on a difference
    python -m wallet watch-settlements [--json]    # ask payees once where booked payments are on chain
    python -m wallet card create --amount 25.00 --intent INTENT_ID [--merchant ID] [--mcc NNNN] [--ttl SECONDS]
    python -m wallet card list [--agent ID]
    python -m wallet card cancel CARD_ID [--reason TEXT]

The CLI talks to the same database as the server (SQLite's write lock, or PostgreSQL's, keeps
the two consistent) and every command goes through ``WalletService``, so a CLI approval is
the same approval as one over HTTP. Configuration is read once, from the environment:

- ``AEP2_WALLET_DB``: SQLAlchemy URL (default ``sqlite+aiosqlite:///wallet.sqlite``);
- ``AEP2_WALLET_KEY``: the key sealing session keys at rest (``keys.Sealer.from_env``);
- ``AEP2_WALLET_OWNER_PASSWORD``: the owner keystore's password;
- ``AEP2_WALLET_OWNER_KEYSTORE``: its file (default ``wallet-owner.json``);
- ``AEP2_WALLET_OWNER_TOKEN``: the owner's bearer credential for the API (``serve`` only);
- ``AEP2_DEPLOYMENT``: the deployment file; ``AEP2_PROCESSOR``: the settlement processor;
- ``AEP2_WALLET_WEBHOOKS_ALLOW_PRIVATE``: ``1`` lets webhook endpoints be on loopback or
  private addresses (a receiver on the same host); off by default (``webhooks``, "Targets").
- ``AEP2_WALLET_COUNCIL`` (``off``, ``offline``, ``anthropic``, ``auto``), ``ANTHROPIC_API_KEY``,
  ``ANTHROPIC_BASE_URL`` and ``AEP2_WALLET_COUNCIL_*``: the AI review council that decides
  reviews (``wallet.council``; off by default: reviews wait for the owner).
- ``AEP2_CARD_BIN``: the card issuer's 6- or 8-digit BIN (default ``wallet.cards.DEFAULT_BIN``).

``card create`` mints a single-use card for the intent's agent, the amount in tokens with up to
6 decimals; it prints the number and CVV, the only time they are shown.

``serve`` also follows booked payments to the chain (``wallet.settlements``), asking each
payee's gateway every ``--settlement-interval`` seconds at most; ``watch-settlements`` asks
once and prints what changed.

``audit verify`` needs only the database: an auditor does not need the owner's keys.
Exit status: 0 done, 1 refused (or a broken audit chain), 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from aep2.deployment import Deployment

from . import audit
from .council import council_from_env
from .cards import DEFAULT_BIN, CardIssuer, CouncilCardReviewer, IssuerBin, to_base_units
from .db import DEFAULT_URL, Database
from .keys import KeyCustodyError, OwnerKeystore, Sealer
from .ledger import LedgerError
from .service import WalletError, WalletService
from .settlements import SettlementWatcher
from .webhooks import Webhooks

DEFAULT_KEYSTORE = "wallet-owner.json"
_CLI_ACTOR = "owner:cli"


class ConfigError(Exception):
    """A missing or malformed setting; the message names the variable."""


@dataclass(frozen=True)
class Config:
    """The environment, read once."""

    db_url: str
    keystore: Path
    owner_token: str | None
    deployment: str | None
    processor: str | None
    allow_private_webhooks: bool
    card_bin: str
    environ: Mapping[str, str]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        env = dict(os.environ if environ is None else environ)
        return cls(
            db_url=env.get("AEP2_WALLET_DB") or DEFAULT_URL,
            keystore=Path(env.get("AEP2_WALLET_OWNER_KEYSTORE") or DEFAULT_KEYSTORE),
            owner_token=env.get("AEP2_WALLET_OWNER_TOKEN") or None,
            deployment=env.get("AEP2_DEPLOYMENT") or None,
            processor=env.get("AEP2_PROCESSOR") or None,
            allow_private_webhooks=env.get("AEP2_WALLET_WEBHOOKS_ALLOW_PRIVATE", "") == "1",
            card_bin=env.get("AEP2_CARD_BIN") or DEFAULT_BIN,
            environ=env,
        )


@asynccontextmanager
async def _service(config: Config) -> AsyncIterator[WalletService]:
    """The wallet service on the configured database, keys, deployment and processor."""
    if config.deployment is None:
        raise ConfigError("AEP2_DEPLOYMENT is not set: the deployment file")
    if config.processor is None:
        raise ConfigError("AEP2_PROCESSOR is not set: the settlement processor's address")
    try:
        deployment = Deployment.load(config.deployment)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"AEP2_DEPLOYMENT: {exc}") from None
    sealer = Sealer.from_env(config.environ)
    owner = OwnerKeystore.load(config.keystore, environ=config.environ)
    from payer import Escrow  # web3: only for the commands that may touch the chain

    try:
        council = council_from_env(config.environ)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    chain = Escrow(deployment, owner.account.key, processor=config.processor)
    db = Database(config.db_url)
    hooks = Webhooks(db, sealer=sealer, allow_private_targets=config.allow_private_webhooks)
    try:
        yield WalletService(
            db, owner=owner, sealer=sealer, deployment=deployment, processor=config.processor,
            webhooks=hooks, chain=chain, council=council,
        )
    finally:
        await hooks.aclose()
        await db.aclose()
        if council is not None:
            await council.aclose()


def _card_issuer(config: Config, service: WalletService) -> CardIssuer:
    try:
        reviewer = None if service.council is None else CouncilCardReviewer(service.council, service)
        return CardIssuer(service, bin=IssuerBin(config.card_bin), reviewer=reviewer)
    except ValueError as exc:
        raise ConfigError(f"AEP2_CARD_BIN: {exc}") from None


# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------


async def _init(config: Config, _args: argparse.Namespace) -> int:
    async with Database(config.db_url) as db:
        await db.create()
    if config.keystore.exists():
        owner = OwnerKeystore.load(config.keystore, environ=config.environ)
    else:
        owner = OwnerKeystore.create(config.keystore, environ=config.environ)
    print(owner.address)
    return 0


async def _serve(config: Config, args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app

    if config.owner_token is None:
        raise ConfigError("AEP2_WALLET_OWNER_TOKEN is not set: the owner's bearer credential (16+ characters)")
    async with _service(config) as service:
        interval = args.settlement_interval
        watcher = SettlementWatcher(service, interval=interval) if interval > 0 else None
        try:
            app = create_app(service, owner_token=config.owner_token, rate_limit=args.rate_limit,
                             auth_failures=args.auth_failures, cards=_card_issuer(config, service),
                             settlements=watcher)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, lifespan="on", log_level=args.log_level))
        try:
            await server.serve()
        finally:
            if watcher is not None:
                await watcher.aclose()
    return 0


async def _watch_settlements(config: Config, args: argparse.Namespace) -> int:
    async with _service(config) as service:
        watcher = SettlementWatcher(service)
        try:
            changed = await watcher.watch_once()
        finally:
            await watcher.aclose()
    for settlement in changed:
        print(json.dumps(settlement.to_json()) if args.json else
              f"{settlement.payment_id} {settlement.stage.value}"
              + (f" batch {settlement.batch_id}" if settlement.batch_id is not None else "")
              + (f" tx {settlement.tx_hash}" if settlement.tx_hash else ""))
    return 0


async def _add_agent(config: Config, args: argparse.Namespace) -> int:
    async with _service(config) as service:
        new = await service.add_agent(args.name, actor=_CLI_ACTOR)
    print(f"agent id: {new.agent_id}\napi key:  {new.api_key}\n(the API key is shown once; store it now)")
    return 0


async def _deposit(config: Config, args: argparse.Namespace) -> int:
    async with _service(config) as service:
        if not args.record_only:
            escrow = service.chain
            await asyncio.to_thread(escrow.deposit, args.amount)  # type: ignore[union-attr]
            if await asyncio.to_thread(escrow.processor_consent_until, service.processor) == 0:  # type: ignore[union-attr]
                await asyncio.to_thread(escrow.authorize_processor, service.processor)  # type: ignore[union-attr]
        await service.record_deposit(args.amount, actor=_CLI_ACTOR)
    print(f"deposited {args.amount} ({'recorded only' if args.record_only else 'on chain and recorded'})")
    return 0


async def _rotate_key(config: Config, args: argparse.Namespace) -> int:
    async with _service(config) as service:
        new = await service.rotate_api_key(args.agent_id, grace_seconds=args.grace, actor=_CLI_ACTOR)
    until = f"in {args.grace} s" if args.grace else "now"
    print(f"agent id: {new.agent_id}\napi key:  {new.api_key}\n(shown once; the old key stops working {until})")
    return 0


async def _approve(config: Config, args: argparse.Namespace) -> int:
    async with _service(config) as service:
        record = await service.approve_intent(args.intent_id, actor=_CLI_ACTOR)
    print(f"{record.id} {record.status.value} {record.chain_intent_id}")
    return 0


async def _deny(config: Config, args: argparse.Namespace) -> int:
    async with _service(config) as service:
        record = await service.deny_intent(args.intent_id, actor=_CLI_ACTOR, reason=args.reason)
    print(f"{record.id} {record.status.value}")
    return 0


async def _register(config: Config, args: argparse.Namespace) -> int:
    async with _service(config) as service:
        record = await service.retry_registration(args.intent_id, actor=_CLI_ACTOR)
    print(f"{record.id} {record.status.value} registered at {record.registered_at}")
    return 0


async def _kill_switch(config: Config, args: argparse.Namespace) -> int:
    async with _service(config) as service:
        if args.state == "on":
            revoked = await service.engage_kill_switch(agent_id=args.agent, actor=_CLI_ACTOR, reason=args.reason)
            print(f"kill switch engaged ({args.agent or 'all agents'}); revoked: {' '.join(revoked) or 'none'}")
        else:
            await service.disengage_kill_switch(agent_id=args.agent, actor=_CLI_ACTOR)
            print(f"kill switch off ({args.agent or 'all agents'})")
    return 0


async def _reconcile(config: Config, args: argparse.Namespace) -> int:
    from .reconcile import reconcile

    async with _service(config) as service:
        report = await reconcile(service, service.chain, settle_from_chain=args.settle_from_chain)  # type: ignore[arg-type]
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        for payment_id in report.booked_from_chain:
            print(f"booked from the chain: {payment_id}")
        for d in report.differences:
            print(f"{d.check} {d.subject}: ledger {d.ledger}, chain {d.chain}" + (f" ({d.detail})" if d.detail else ""))
        print(f"{'ok' if report.ok else 'DIFFERENCES'}: {len(report.differences)} differences; escrow ledger "
              f"{report.ledger_escrow}, chain {report.chain_escrow}; {report.intents} intents, {report.payments} payments")
    return 0 if report.ok else 1


async def _card(config: Config, args: argparse.Namespace) -> int:
    async with _service(config) as service:
        cards = _card_issuer(config, service)
        if args.action == "list":
            for card in await cards.cards(agent_id=args.agent):
                print(f"{card.id} {card.status.value} {card.amount} ····{card.last4} "
                      f"{card.exp_month:02d}/{card.exp_year} {card.merchant_id or '*'} {card.mcc or '*'}")
            return 0
        if args.action == "cancel":
            card = await cards.cancel(args.card_id, actor=_CLI_ACTOR, reason=args.reason)
            print(f"{card.id} {card.status.value}")
            return 0
        amount = to_base_units(args.amount)
        intent = await service.intent(args.intent)
        result = await cards.mint(intent.agent_id, intent_id=intent.id, amount=amount, merchant_id=args.merchant,
                                  mcc=args.mcc, ttl_seconds=args.ttl, actor=_CLI_ACTOR)
    if result.outcome == "review":
        print(f"review {result.review_id}: {result.reason}")
        return 1
    if result.card is None or result.secrets is None:
        print(f"refused: {result.rule}: {result.reason}", file=sys.stderr)
        return 1
    card = result.card
    print(f"card:   {card.id} ({amount} base units, intent {card.intent_id})\n"
          f"number: {result.secrets.number}\ncvv:    {result.secrets.cvv}\n"
          f"expiry: {card.exp_month:02d}/{card.exp_year} (exactly at unix {card.expires_at:.0f})\n"
          "(the number and CVV are shown once; store them now)")
    return 0


async def _audit_verify(config: Config, _args: argparse.Namespace) -> int:
    async with Database(config.db_url) as db:
        report = await audit.verify(db)
    if report.ok:
        print(f"ok: {report.records} records, head {report.head_seq} {report.head_hash}")
        return 0
    print(f"broken at seq {report.seq}: {report.fault.value if report.fault else '?'}: {report.detail}", file=sys.stderr)
    return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m wallet", description="The AEP2 co-wallet.")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, run: Callable[[Config, argparse.Namespace], Awaitable[int]], help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help)
        sub.set_defaults(run=run)
        return sub

    command("init", _init, "create the schema and the owner keystore; print the owner address")
    serve = command("serve", _serve, "serve the HTTP API (uvicorn)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--rate-limit", default="60/second", help="per credential, limits notation")
    serve.add_argument("--auth-failures", default="10/minute",
                       help="failed authentications per client and per key id before 429, limits notation")
    serve.add_argument("--log-level", default="info")
    serve.add_argument("--settlement-interval", type=float, default=2.0,
                       help="seconds between asks for a booked payment's batch (0: do not follow them)")
    watch = command("watch-settlements", _watch_settlements,
                    "ask payees' gateways once where booked payments are on their way to the chain")
    watch.add_argument("--json", action="store_true")
    command("add-agent", _add_agent, "add an agent; prints its API key once").add_argument("name")
    deposit = command("deposit", _deposit, "deposit into the escrow with the processor (base units) and book it")
    deposit.add_argument("amount", type=int)
    deposit.add_argument("--record-only", action="store_true", help="book a deposit already made on chain")
    rotate = command("rotate-key", _rotate_key, "issue an agent a new API key; prints it once")
    rotate.add_argument("agent_id")
    rotate.add_argument("--grace", type=int, default=0, help="seconds the old key keeps working (default 0)")
    command("approve", _approve, "approve a pending intent").add_argument("intent_id")
    command("register", _register, "retry a failed on-chain registration").add_argument("intent_id")
    deny = command("deny", _deny, "deny a pending intent")
    deny.add_argument("intent_id")
    deny.add_argument("--reason", default="")
    kill = command("kill-switch", _kill_switch, "engage or release the kill switch")
    kill.add_argument("state", choices=["on", "off"])
    kill.add_argument("--agent", default=None, help="one agent's id (default: every agent)")
    kill.add_argument("--reason", default="")
    check = command("reconcile", _reconcile, "compare the ledger with the chain; exit 1 on any difference")
    check.add_argument("--settle-from-chain", action="store_true",
                       help="book payments the chain settled but the wallet never heard of")
    check.add_argument("--json", action="store_true")
    card = command("card", _card, "single-use cards: create, list, cancel")
    card_actions = card.add_subparsers(dest="action", required=True)
    create = card_actions.add_parser("create", help="mint a card for the intent's agent; prints number and CVV once")
    create.add_argument("--amount", required=True, help="in tokens, up to 6 decimals (25.00)")
    create.add_argument("--intent", required=True, help="the funding intent's id")
    create.add_argument("--merchant", default=None, help="lock the card to this merchant id")
    create.add_argument("--mcc", default=None, help="lock the card to this 4-digit merchant category code")
    create.add_argument("--ttl", type=int, default=86_400, help="lifetime in seconds (cut at the intent's end)")
    card_actions.add_parser("list", help="every card, last 4 digits only").add_argument("--agent", default=None)
    cancel = card_actions.add_parser("cancel", help="cancel a card: its hold returns to the intent")
    cancel.add_argument("card_id")
    cancel.add_argument("--reason", default="")
    audit_cmd = command("audit", _audit_verify, "audit trail commands")
    audit_cmd.add_argument("action", choices=["verify"])
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = _parser().parse_args(argv)
    config = Config.from_env(environ)
    try:
        return asyncio.run(args.run(config, args))
    except (ConfigError, KeyCustodyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (WalletError, LedgerError) as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
