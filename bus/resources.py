"""Where the project's data files are: configs, shipped checkpoints, tactile embeddings, the browser page.

They ship inside packages (``configs`` and ``checkpoints`` are packages too), so one lookup through the import
system finds them from a source tree (``python -m`` in the repo, an editable install) and from an installed wheel
alike, whatever the working directory.

    from bus.resources import config_dir, package_dir
    cfg = config_dir() / "eval.yaml"
    page = package_dir("teleop.web") / "index.html"
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def package_dir(package: str) -> Path:
    """The directory on disk holding ``package``'s files. A real directory, not a traversable: hydra and the
    loaders take paths (a zipped install is refused)."""
    try:
        root = resources.files(package)
    except ModuleNotFoundError:
        raise ModuleNotFoundError(f"package {package!r} not found: slowfast's data packages are missing from this "
                                  "install (reinstall it: pip install -e . in the repo, or pip install the wheel)"
                                  ) from None
    if not isinstance(root, Path) or not root.is_dir():
        raise NotADirectoryError(f"package {package!r} is at {root}, not a directory on disk: install slowfast "
                                 "unzipped (pip install), not as a zip")
    return root.resolve()


def config_dir() -> Path:
    """``configs/``: the hydra config tree (``eval.yaml``, ``train.yaml``, groups) and the nodes' yaml files."""
    return package_dir("configs")


def checkpoint_dir() -> Path:
    """``checkpoints/``: the shipped training runs, ``<task>/<run>/``."""
    return package_dir("checkpoints")
