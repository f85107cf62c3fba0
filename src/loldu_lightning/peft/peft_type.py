"""``PeftType.LOLDU``: a member added to PEFT's closed ``PeftType`` enum.

PEFT keys every registry (config class, tuner class, prefix) by a ``PeftType`` member, and
``register_peft_method`` only accepts names that already are members. Python enums cannot be
extended through a public API, so the member is added the way the enum machinery itself stores
members (name and value maps, member list, class attribute) and then checked through the public
API (lookup by value, by name, iteration); any Python whose enum internals differ fails that check
with one clear error instead of half-working.
"""

from __future__ import annotations

import enum
import sys

from peft.utils import PeftType

NAME = "LOLDU"


def _add_member(enum_cls: type[enum.Enum], name: str, value: str) -> enum.Enum:
    member = str.__new__(enum_cls, value)
    member._name_ = name
    member._value_ = value
    member.__objclass__ = enum_cls
    if hasattr(enum_cls[next(iter(enum_cls.__members__))], "_sort_order_"):
        member._sort_order_ = len(enum_cls._member_names_)
    if hasattr(enum_cls, "_add_member_"):  # Python >= 3.13: sets the class attribute and the name map
        enum_cls._add_member_(name, member)
    else:
        enum_cls._member_map_[name] = member
        type.__setattr__(enum_cls, name, member)  # EnumType.__setattr__ refuses new members
    enum_cls._member_names_.append(name)
    enum_cls._value2member_map_[value] = member
    hashable = getattr(enum_cls, "_hashable_values_", None)
    if isinstance(hashable, list):
        hashable.append(value)
    return member


def _reduce_member(protocol: int) -> tuple:
    return loldu_peft_type, ()


def loldu_peft_type() -> PeftType:
    """``PeftType.LOLDU``, added on first use; the same member on every later call (and import)."""
    if NAME in PeftType.__members__:
        return PeftType[NAME]
    member = _add_member(PeftType, NAME, NAME)
    # Pickled by reference to this function rather than as PeftType("LOLDU"), so a process that
    # unpickles a LoLDU config (a spawned DDP worker) adds the member before looking it up.
    member.__reduce_ex__ = _reduce_member
    if not (PeftType(NAME) is member and PeftType[NAME] is member and member in list(PeftType) and member == NAME):
        raise RuntimeError(
            f"loldu_lightning.peft could not add {NAME} to peft.utils.PeftType on Python "
            f"{sys.version.split()[0]}: the enum's internals differ from those of Python 3.10-3.13. "
            "Use Python 3.10-3.13 for LoLDU through PEFT (the framework's own path, loldu_lightning.loldu, needs no PEFT)."
        )
    return member
