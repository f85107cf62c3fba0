"""The one conversion of the composed config into plain dicts and lists.

Everything past the builders (models, tasks, data modules, callbacks) reads plain mappings, so it
works the same from a test, a notebook or the CLI and never depends on OmegaConf.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from ..cli.config_tree import register_value_resolvers


def plain(node: Any) -> Any:
    """`node` with interpolations resolved, as dicts and lists; a value that is already plain is returned as is."""
    if isinstance(node, (DictConfig, ListConfig)):
        register_value_resolvers()  # the tree's own interpolations (${package_path:...}), also outside the CLI
        return OmegaConf.to_container(node, resolve=True)
    return node
