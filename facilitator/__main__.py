"""``python -m facilitator [--host H] [--port P]``: the same as
``uvicorn --factory facilitator.app:from_env``, configured by ``FACILITATOR_RPC_URL`` and
``FACILITATOR_PRIVATE_KEY`` (``exact``), plus ``FACILITATOR_DEPLOYMENT``, ``FACILITATOR_STORE``
and ``FACILITATOR_PROCESSOR`` to serve ``aep2`` too (see ``facilitator.app``)."""

from __future__ import annotations

import argparse

import uvicorn


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m facilitator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8402)
    args = parser.parse_args()
    uvicorn.run("facilitator.app:from_env", factory=True, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
