"""LoLDU's options are explained once, in LoLDUConfig's field metadata; PEFT's config, `--help`'s listing
and docs/options.md read the meaning and the allowed names from there."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from loldu_lightning.cli.help_text import options_listing
from loldu_lightning.loldu import LoLDUConfig
from loldu_lightning.loldu.config import option_help
from loldu_lightning.loldu.registries import INITS, SCALINGS
from loldu_lightning.peft import PEFT_FIELD_NAMES, LoLDUPeftConfig

OPTIONS_PAGE = Path(__file__).resolve().parents[1] / "docs" / "options.md"


def test_every_loldu_option_has_its_meaning_in_the_field_metadata():
    for spec_field in dataclasses.fields(LoLDUConfig):
        assert spec_field.metadata.get("help"), f"LoLDUConfig.{spec_field.name} has no help"


def test_peft_config_reads_the_meaning_from_loldu_config():
    peft_fields = {f.name: f for f in dataclasses.fields(LoLDUPeftConfig)}
    # alpha and init mean something else under PEFT's names (loldu_alpha over r, init_weights True/False/name)
    shared = [f.name for f in dataclasses.fields(LoLDUConfig) if f.name not in ("alpha", "init")]
    for name in shared:
        peft_name = PEFT_FIELD_NAMES.get(name, name)
        assert option_help(name, with_choices=False) in peft_fields[peft_name].metadata["help"], name
    assert peft_fields["scaling"].metadata["help"] == option_help("scaling")
    assert all(init in peft_fields["init_weights"].metadata["help"] for init in INITS)


def test_help_and_the_options_page_show_meaning_and_allowed_values():
    listing = options_listing(full_adapters=True)
    init_line = next(line for line in listing.splitlines() if line.strip().startswith("adapter.init=uniform"))
    assert option_help("init", with_choices=False) in init_line
    assert "one of: " + " | ".join(sorted(INITS)) in init_line
    page = OPTIONS_PAGE.read_text()
    row = next(line for line in page.splitlines() if line.startswith("| `adapter.scaling` |") and "learned" in line)
    assert " \\| ".join(sorted(SCALINGS)) in row or " | ".join(sorted(SCALINGS)) in row, row
    assert option_help("scaling", with_choices=False) in row
