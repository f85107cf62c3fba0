"""``python -m loldu_lightning.export peft <native adapter dir> <out dir>`` (and ``native`` for the way back)."""

from __future__ import annotations

import argparse
import sys

from .convert import native_to_peft, peft_to_native

CONVERTERS = {"peft": native_to_peft, "native": peft_to_native}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loldu_lightning.export",
        description="Convert a LoLDU adapter folder between the framework's native format and PEFT's.",
    )
    parser.add_argument(
        "target",
        choices=sorted(CONVERTERS),
        help="peft: native folder (e.g. <run>/adapter/best) -> PEFT folder; native: PEFT folder -> native folder",
    )
    parser.add_argument("adapter_dir", help="the folder to convert (adapter_config.json + adapter_model.safetensors)")
    parser.add_argument("out_dir", help="where to write the converted folder (created if needed)")
    args = parser.parse_args(argv)
    try:
        out = CONVERTERS[args.target](args.adapter_dir, args.out_dir)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {args.target} adapter to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
