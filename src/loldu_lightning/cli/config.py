"""Config helpers shared by the CLI and `train(cfg)`: where the config tree is, its resolvers, and
early validation (against the typed options of options/, read by builders/schema.py).

Validation runs before any model or dataset loads, so a typo costs a second, not a download.
Importing this module registers nothing: the CLI entries, `validate_config` and the code that
composes configs call `register_resolvers()` (idempotent) before anything resolves a value.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from ..options import RunOptions

# the tree's location and value resolvers live in cli/config_tree.py (imported by the schema too)
from .config_tree import auto_precision, config_dir, glue_dir, package_path, register_value_resolvers

__all__ = ["auto_precision", "config_dir", "glue_dir", "package_path", "register_resolvers", "validate_config"]


def register_resolvers() -> None:
    """Make the config tree's own interpolations (`${glue_dir:...}`, `${auto_precision:...}`, the help
    text's listings) resolvable; calling it again does nothing."""
    register_value_resolvers()
    if not OmegaConf.has_resolver("help_config_groups"):
        from .help_text import config_groups

        OmegaConf.register_new_resolver("help_config_groups", config_groups)
    if not OmegaConf.has_resolver("help_options"):
        from .help_text import help_options

        OmegaConf.register_new_resolver("help_options", help_options)


def validate_config(cfg: DictConfig) -> RunOptions:
    """Refuse, in one line naming the key, what Hydra's composition lets through: a value of the wrong
    type or out of range, a name no registry knows, a misspelt key inside a typed group, an adapter
    option its adapter does not take (options/ declares every option).

    Only the config is read here; what the config points at (paths, the hub, the model's shapes) is
    checked by preflight.preflight, which the CLI runs next. Registers the resolvers first, so a config
    composed in a notebook validates (and resolves) without the CLI. Returns the typed options
    (`RunOptions`), which preflight and train take as they are, so one run reads its config once.
    """
    from ..builders.schema import run_options

    register_resolvers()
    return run_options(cfg)
