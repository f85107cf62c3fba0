"""Adapter format conversion: ``python -m loldu_lightning.export peft|native <adapter dir> <out dir>``."""

from .convert import native_to_peft, peft_to_native

__all__ = ["native_to_peft", "peft_to_native"]
