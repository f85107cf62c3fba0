"""``python -m loldu_lightning.serve --model <base> --adapters <folder-of-adapter-folders>``."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m loldu_lightning.serve",
        description="Serve many LoLDU adapters of one base model over HTTP, batching requests across adapters.",
    )
    parser.add_argument("--model", required=True, help="minilm, smollm2 or a local transformers model folder")
    parser.add_argument(
        "--adapters", required=True, help="a folder whose subfolders are adapter folders (native or PEFT)"
    )
    parser.add_argument(
        "--task", choices=["classification", "generation"], default=None, help="default: from the model"
    )
    parser.add_argument("--host", default="127.0.0.1", choices=["127.0.0.1", "0.0.0.0", "::"])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-batch-size", type=int, default=64, help="most requests answered by one forward pass")
    parser.add_argument("--batch-timeout", type=float, default=0.05, help="seconds a batch waits to fill up")
    parser.add_argument("--max-length", type=int, default=512, help="longest input in tokens (longer: 413)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="most tokens a generation request may ask for")
    parser.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--log-level", default="info")
    return parser.parse_args(argv)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    # Ctrl-C and `kill <pid>` both stop the server and its worker processes (LitServe's shutdown on
    # KeyboardInterrupt), also when the shell started it in the background with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    if not Path(args.adapters).is_dir():
        print(
            f"error: --adapters {args.adapters} is not a folder; pass a folder whose subfolders are adapters",
            file=sys.stderr,
        )
        return 2
    try:
        from .server import serve
    except ImportError as error:
        print(f"error: the server needs LitServe ({error}); pip install 'loldu-lightning[serve]'", file=sys.stderr)
        return 2
    serve(
        args.model,
        args.adapters,
        host=args.host,
        port=args.port,
        task=args.task,
        max_batch_size=args.max_batch_size,
        batch_timeout=args.batch_timeout,
        max_length=args.max_length,
        max_new_tokens=args.max_new_tokens,
        accelerator=args.accelerator,
        log_level=args.log_level,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
