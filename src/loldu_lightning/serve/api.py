"""The LitServe API of the adapter server: one worker process holds the base model and the adapters.

``POST /predict`` requests go through LitServe's batching loop: concurrent requests, whatever their
adapters, are collected into one batch and answered by one ``AdapterService.predict``. Each request
is decoded and checked on its own, and a refused one is answered with its own 4xx response (a
``JSONResponse`` passes through LitServe untouched), so a bad request never fails its batch.

Adapter management (``POST /adapters``, ``DELETE /adapters/<name>``, ``GET /adapters``,
``GET /stats``) must reach the same worker, where the adapters live: ``server.py`` sends them down
the same request queue as control messages carrying a secret made at start-up, which clients of
``/predict`` cannot forge. They run before the predictions of the batch they arrive in.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import litserve as ls
from fastapi.responses import JSONResponse

from .service import AdapterService, Request, RequestError

logger = logging.getLogger(__name__)

CONTROL_KEY = "_loldu_control"
REQUEST_KEYS = {"adapter", "inputs", "max_new_tokens"}


@dataclass
class ServeOptions:
    """What the worker needs to build its ``AdapterService`` (picklable: it crosses into the worker)."""

    model: str
    adapters: str | None
    task: str | None = None
    max_length: int = 512
    max_new_tokens: int = 256


@dataclass
class Control:
    op: str
    args: dict[str, Any]


@dataclass
class Refused:
    status: int
    message: str


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class AdapterLitAPI(ls.LitAPI):
    """See the module docstring."""

    def __init__(self, options: ServeOptions, secret: str, max_batch_size: int = 64, batch_timeout: float = 0.05):
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout)
        self.options = options
        self.secret = secret
        self.service: AdapterService | None = None

    def setup(self, device: str) -> None:
        self.service = AdapterService.from_model(
            self.options.model,
            self.options.adapters,
            task=self.options.task,
            device=device,
            max_length=self.options.max_length,
            max_new_tokens=self.options.max_new_tokens,
        )
        for name, reason in self.service.refused.items():
            logger.warning("adapter %s refused: %s", name, reason)
        logger.info("serving %d adapters: %s", len(self.service.adapters), self.service.adapters)

    def decode_request(self, request: dict) -> Request | Control | Refused:  # the annotation makes FastAPI parse JSON
        if request.get(CONTROL_KEY) is not None:
            if request[CONTROL_KEY] != self.secret:
                return Refused(400, "unknown field _loldu_control")
            return Control(request["op"], request.get("args") or {})
        unknown = sorted(set(request) - REQUEST_KEYS)
        if unknown:
            return Refused(422, f"unknown field {unknown[0]!r}; a request has 'adapter', 'inputs' and 'max_new_tokens'")
        if "adapter" not in request or "inputs" not in request:
            return Refused(422, 'a request needs "adapter" (a loaded adapter name) and "inputs"')
        try:
            return self.service.check(Request(request["adapter"], request["inputs"], request.get("max_new_tokens")))
        except RequestError as error:
            return Refused(error.status, str(error))
        except Exception as error:  # e.g. the tokenizer refusing the input: this request fails, not its batch
            return Refused(422, f"inputs could not be read: {type(error).__name__}: {error}".splitlines()[0])

    def batch(self, inputs: list[Any]) -> list[Any]:
        return inputs

    def predict(self, items: list[Any]) -> list[Any]:
        outputs: list[Any] = [None] * len(items)
        for i, item in enumerate(items):
            if isinstance(item, Control):
                outputs[i] = self._control(item)
            elif isinstance(item, Refused):
                outputs[i] = item
        # Checked again: an adapter removed by a control message of this batch must not serve.
        ready = []
        for i, item in enumerate(items):
            if isinstance(item, Request):
                if item.adapter in self.service.adapters:
                    ready.append(i)
                else:
                    outputs[i] = Refused(404, f"unknown adapter {item.adapter!r}; loaded: {self.service.adapters}")
        if ready:
            try:
                answers = self.service.predict([items[i] for i in ready])
            except Exception as error:  # the server must outlive any request
                logger.exception("batch failed")
                answers = [Refused(500, f"the batch failed: {type(error).__name__}: {error}")] * len(ready)
            for i, answer in zip(ready, answers, strict=True):
                outputs[i] = answer
        return outputs

    def unbatch(self, output: list[Any]) -> list[Any]:
        return output

    def encode_response(self, output: Any) -> Any:
        if isinstance(output, Refused):
            return error_response(output.status, output.message)
        return output

    def _control(self, control: Control) -> Any:
        service = self.service
        try:
            if control.op == "add":
                name, path = control.args.get("name"), control.args.get("path")
                if not isinstance(name, str) or not isinstance(path, str):
                    return Refused(422, 'POST /adapters needs {"name": ..., "path": "<adapter folder>"}')
                service.add(name, path)
                return {"added": name, "adapters": service.adapters, "bytes": service.adapter_bytes()[name]}
            if control.op == "remove":
                service.remove(control.args["name"])
                return {"removed": control.args["name"], "adapters": service.adapters}
            if control.op == "list":
                return {"adapters": service.adapters, "bytes": service.adapter_bytes(), "task": service.task}
            if control.op == "stats":
                return {**vars(service.stats), "adapters": len(service.adapters)}
        except KeyError as error:
            return Refused(404, str(error.args[0]))
        except (ValueError, FileNotFoundError) as error:
            return Refused(400, str(error).splitlines()[0])
        return Refused(400, f"unknown operation {control.op!r}")
