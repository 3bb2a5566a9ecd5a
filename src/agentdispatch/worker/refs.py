"""References to user functions that a job process can import by itself.

Job processes are started with ``forkserver`` or ``spawn``: they do not inherit the parent's memory, so
the entrypoint and prewarm functions travel as *references* (an importable module or a file path, plus a
qualified name) and each child imports them. This module has no heavy imports: the child uses it.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from ..protocol.errors import ConfigError

_USER_MODULE_PREFIX = "_agentdispatch_user_"


@dataclass(frozen=True)
class FunctionRef:
    """A module-level function, named by module (importable) or by file path, and qualified name."""

    qualname: str
    module: str = ""
    path: str = ""

    def describe(self) -> str:
        return f"{self.module or self.path}:{self.qualname}"


def _is_identifier_path(text: str) -> bool:
    return bool(text) and all(part.isidentifier() for part in text.split("."))


def parse_ref(text: str, what: str) -> FunctionRef:
    """Parse ``"package.module:function"`` or ``"path/to/file.py:function"``; check it can be found."""
    target, sep, qualname = text.rpartition(":")
    if not sep or not target or not _is_identifier_path(qualname):
        raise ConfigError(
            f"{what} must look like 'module:function' or 'path/to/file.py:function', got {text!r}"
        )
    if target.endswith(".py"):
        path = os.path.abspath(target)
        if not os.path.isfile(path):
            raise ConfigError(f"{what}: file {target!r} does not exist")
        return FunctionRef(qualname=qualname, path=path)
    if not _is_identifier_path(target):
        raise ConfigError(f"{what}: {target!r} is not a module name")
    try:
        found = importlib.util.find_spec(target)
    except (ImportError, ValueError) as exc:
        raise ConfigError(f"{what}: cannot find module {target!r}: {exc}") from None
    if found is None:
        raise ConfigError(f"{what}: cannot find module {target!r}")
    return FunctionRef(qualname=qualname, module=target)


def ref_from_callable(fn: Callable[..., Any], what: str) -> FunctionRef:
    """The reference of a module-level function; ConfigError for lambdas, closures and methods."""
    qualname = getattr(fn, "__qualname__", "")
    module_name = getattr(fn, "__module__", None)
    if not qualname or module_name is None or "<" in qualname:
        raise ConfigError(
            f"{what} must be a function defined at module level (each job process imports it by name); "
            f"got {fn!r}"
        )
    module = sys.modules.get(module_name)
    if module is None or _lookup(module, qualname) is not fn:
        raise ConfigError(
            f"{what}: {module_name}.{qualname} cannot be found again by name; define it at module level"
        )
    if (
        module_name == "__main__"
        or module_name.startswith(_USER_MODULE_PREFIX)
        or module_name == "__mp_main__"
    ):
        path = getattr(module, "__file__", None)
        if not path:
            raise ConfigError(f"{what} is defined in an interactive session; put it in a file")
        return FunctionRef(qualname=qualname, path=os.path.abspath(path))
    return FunctionRef(qualname=qualname, module=module_name)


def _lookup(module: ModuleType, qualname: str) -> Any:
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def load_module_from_path(path: str) -> ModuleType:
    """Import a Python file once per process (reusing it if it was already imported under any name)."""
    path = os.path.abspath(path)
    name = _USER_MODULE_PREFIX + hashlib.sha1(path.encode()).hexdigest()[:12]
    # only the names a user file can already have: scanning all of sys.modules would touch (and so
    # copy, in a forked job process) every page holding a module object
    for known in ("__main__", "__mp_main__", name):
        module = sys.modules.get(known)
        file = getattr(module, "__file__", None)
        if module is not None and file and os.path.abspath(file) == path:
            return module
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def load_ref(ref: FunctionRef) -> Callable[..., Any]:
    """Import the function a reference names (in the parent at startup, and in every child)."""
    module = load_module_from_path(ref.path) if ref.path else importlib.import_module(ref.module)
    fn = _lookup(module, ref.qualname)
    if fn is None or not callable(fn):
        raise ConfigError(f"{ref.describe()} is not a function")
    return fn  # type: ignore[no-any-return]
