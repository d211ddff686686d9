"""The megatron-core versions this integration supports, and every difference between them, in one place.

Supported: 0.16.x (the newest for Python 3.10/3.11) through 0.19.x (Python >= 3.12); CI tests 0.16.1 and
0.19.2. The differences that matter here:

- 0.16 indexes a per-layer ``cp_comm_type`` list with the 1-based layer number (each layer gets the next
  layer's entry, the last one raises IndexError); 0.17 fixed it (``layer_number - 1``).
- From 0.17 the wheel ships ``megatron.training`` (Megatron-LM's loop); 0.19's ``pretrain`` takes a
  ``PretrainConfigContainer`` that holds the model config, which is what the Megatron-LM style example calls.
- The wheels ship the dataset index helper compiled (``helpers_cpp``) but not the Makefile that
  ``initialize_megatron`` runs ``make`` on, so that loop exits on rank 0 (``use_shipped_dataset_helpers``).
"""

from __future__ import annotations

import importlib.util
import os
import re
import warnings

from megatron.core import __version__ as _megatron_core_version

__all__ = ["CP_COMM_TYPE_LIST_OFF_BY_ONE", "MEGATRON_CORE_VERSION", "SUPPORTED", "require_megatron_training",
           "use_shipped_dataset_helpers"]

SUPPORTED = ((0, 16), (0, 19))  # oldest and newest supported (major, minor), both ends included


def parse_version(text: str) -> tuple[int, int]:
    """``(major, minor)`` of a version string such as ``"0.19.2"`` or ``"0.16.0rc0.dev100085"``."""
    match = re.match(r"(\d+)\.(\d+)", text)
    if match is None:
        raise ValueError(f"cannot read a megatron-core version from {text!r}")
    return int(match.group(1)), int(match.group(2))


MEGATRON_CORE_VERSION = parse_version(_megatron_core_version)

if MEGATRON_CORE_VERSION < SUPPORTED[0]:
    raise ImportError(f"tasp_plugin.integrations.megatron needs megatron-core >= 0.16; found "
                      f"{_megatron_core_version} (pip install 'megatron-core>=0.16,<0.20')")
if MEGATRON_CORE_VERSION > SUPPORTED[1]:
    warnings.warn(f"megatron-core {_megatron_core_version} is newer than the newest version tasp_plugin is "
                  "tested with (0.19.x)", stacklevel=2)

CP_COMM_TYPE_LIST_OFF_BY_ONE = MEGATRON_CORE_VERSION < (0, 17)


def require_megatron_training() -> None:
    """Raise ``ImportError`` with what to install unless Megatron-LM's loop of megatron-core >= 0.19 is here."""
    if MEGATRON_CORE_VERSION < (0, 19) or importlib.util.find_spec("megatron.training") is None:
        raise ImportError(f"this needs megatron.training from megatron-core >= 0.19 (Python >= 3.12); found "
                          f"megatron-core {_megatron_core_version}: pip install 'megatron-core>=0.19,<0.20'")


def use_shipped_dataset_helpers() -> bool:
    """Make Megatron's dataset-helper build a no-op where the compiled ``helpers_cpp`` is installed but its
    Makefile is not (a pip-installed wheel); returns whether it did. A source checkout still builds."""
    from megatron.core.datasets import utils

    source = os.path.dirname(os.path.abspath(utils.__file__))
    if os.path.exists(os.path.join(source, "Makefile")):
        return False
    if importlib.util.find_spec("megatron.core.datasets.helpers_cpp") is None:
        return False
    utils.compile_helpers = _shipped_helpers
    return True


def _shipped_helpers() -> None:
    """Stands in for ``compile_helpers``: the compiled module is already there, so just load it."""
    importlib.import_module("megatron.core.datasets.helpers_cpp")
