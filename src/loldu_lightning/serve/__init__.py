"""Many LoLDU adapters on one base model over HTTP (LitServe), batched across adapters.

    python -m loldu_lightning.serve --model minilm --adapters adapters/ --port 8000

``AdapterService`` is the same thing as a Python API, without HTTP. LitServe is the ``serve``
extra (``pip install 'loldu-lightning[serve]'``); ``service`` works without it.
"""

from .service import AdapterService, Request, RequestError, Stats

__all__ = ["AdapterService", "Request", "RequestError", "Stats"]
