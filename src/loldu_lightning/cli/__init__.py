"""Command-line support for `python -m loldu_lightning`: override checks and single-run composition
(`overrides`), the checks before a run starts (`preflight`), `--help` and the option listing
(`help_text`, `options`), the config tree's resolvers and validation (`config`), one-line user errors
(`errors`), multirun x DDP (`hydra_ddp`) and the resume command (`resume_hint`).

Imports nothing itself, so `from loldu_lightning.cli.errors import UserError` stays light.
"""
