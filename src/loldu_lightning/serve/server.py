"""The LitServe server: ``/predict`` (``api.AdapterLitAPI``) plus the adapter management routes.

``build_server`` returns a ``litserve.LitServer``; ``serve`` builds and runs one. The management
routes run in the HTTP process and hand their operation to the inference worker through LitServe's
own request queue (``api`` module docstring), so they see and change the adapters that serve.
"""

from __future__ import annotations

import secrets
from typing import Any

import litserve as ls
from litserve.server import RegularRequestHandler

from .api import CONTROL_KEY, AdapterLitAPI, ServeOptions


def build_server(
    options: ServeOptions,
    *,
    max_batch_size: int = 64,
    batch_timeout: float = 0.05,
    accelerator: str = "auto",
    timeout: float = 300,
) -> ls.LitServer:
    """A server for ``options``: one inference worker (the adapters live in it) on one device."""
    secret = secrets.token_urlsafe(32)
    api = AdapterLitAPI(options, secret, max_batch_size=max_batch_size, batch_timeout=batch_timeout)
    server = ls.LitServer(api, accelerator=accelerator, devices=1, workers_per_device=1, timeout=timeout)
    handler = RegularRequestHandler(api, server)

    async def control(op: str, args: dict[str, Any] | None = None) -> Any:
        return await handler.handle_request({CONTROL_KEY: secret, "op": op, "args": args or {}}, dict)

    async def add_adapter(body: dict) -> Any:
        return await control("add", body)

    async def remove_adapter(name: str) -> Any:
        return await control("remove", {"name": name})

    async def list_adapters() -> Any:
        return await control("list")

    async def stats() -> Any:
        return await control("stats")

    server.app.add_api_route("/adapters", add_adapter, methods=["POST"])
    server.app.add_api_route("/adapters/{name}", remove_adapter, methods=["DELETE"])
    server.app.add_api_route("/adapters", list_adapters, methods=["GET"])
    server.app.add_api_route("/stats", stats, methods=["GET"])
    return server


def serve(
    model: str,
    adapters: str | None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    task: str | None = None,
    max_batch_size: int = 64,
    batch_timeout: float = 0.05,
    max_length: int = 512,
    max_new_tokens: int = 256,
    accelerator: str = "auto",
    log_level: str = "info",
) -> None:
    """Load ``model`` and the adapter folders in ``adapters`` and serve them until interrupted."""
    options = ServeOptions(model, adapters, task, max_length, max_new_tokens)
    server = build_server(options, max_batch_size=max_batch_size, batch_timeout=batch_timeout, accelerator=accelerator)
    server.run(host=host, port=port, num_api_servers=1, generate_client_file=False, log_level=log_level)
