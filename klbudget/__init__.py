"""klbudget: KL-budgeted RL of language models against imitative base policies.

The names a user needs (imported on first use, so ``import klbudget`` stays fast):

- :func:`train`, :func:`evaluate`, :func:`write_report`, :func:`make_config`: the Python API
  (``klbudget.api``);
- :class:`KLBudgetProcessor`, :func:`budgeted_generate`: KL-budgeted generation for any pair
  of Hugging Face causal LMs; :func:`export_agent`, :class:`AgentProcessor`: a trained
  agent as a folder, and back as a ``LogitsProcessor`` (``klbudget.generation``);
- :func:`fixed_kl_mixture`: the mixture with KL(x‖b) = k (``klbudget.core.mixture``);
- :class:`Config`, :func:`load_config`: configs (``klbudget.config``).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# (`write_report`, not `report`: `klbudget.report` is the subpackage, and importing it
# would shadow a function of that name.)
_EXPORTS = {
    "train": "klbudget.api",
    "evaluate": "klbudget.api",
    "write_report": "klbudget.api",
    "make_config": "klbudget.api",
    "KLBudgetProcessor": "klbudget.generation",
    "budgeted_generate": "klbudget.generation",
    "AgentProcessor": "klbudget.generation",
    "export_agent": "klbudget.generation",
    "fixed_kl_mixture": "klbudget.core.mixture",
    "Config": "klbudget.config",
    "load_config": "klbudget.config",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'klbudget' has no attribute {name!r}")
    attr = "load" if name == "load_config" else name
    return getattr(importlib.import_module(module), attr)


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
