"""Read downloaded weight files without running code from them.

A pickle is a program: unpickling calls whatever functions the file names, so a file that
names ``os.system`` runs a shell command. Published weights come in three shapes:

* a plain state dict or a dict holding one (``{"state_dict": ...}``): ``torch.load`` with
  ``weights_only=True`` reads these safely and is tried first;
* a whole pickled ``nn.Module`` (torchxrayvision saves its DenseNets so): the module classes
  are not importable here and must not be. :class:`RestrictedUnpickler` allows only tensor
  and storage rebuild functions, ``OrderedDict``/``set``, torch <= 1.2's module backend marker
  (``torch.nn.backends.thnn._get_thnn_function_backend``, answered with None) and the class paths in
  :data:`MODULE_CLASSES`; each of those becomes an inert :class:`ModuleState` that only keeps
  the pickled ``__dict__`` (parameters, buffers, children), never the publisher's code;
* anything else (a function, ``builtins.eval``, an unknown class) is refused with
  :class:`UnsafePickleError`, which names the file and the callable.

Both torch file layouts work: the zip archive (``data.pkl`` + storages) and the legacy
pre-1.6 stream, because torch's own reader drives our unpickler (``pickle_module``).
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

from xraytriage.errors import (
    UnsafePickleError,
    XRayTriageError,
)

TORCH_NN_CLASSES = {
    "torch.nn.modules.conv": ("Conv2d",),
    "torch.nn.modules.batchnorm": ("BatchNorm2d",),
    "torch.nn.modules.activation": ("ReLU", "Sigmoid"),
    "torch.nn.modules.pooling": ("MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d"),
    "torch.nn.modules.linear": ("Linear",),
    "torch.nn.modules.container": ("Sequential", "ModuleList", "ModuleDict"),
    "torch.nn.modules.dropout": ("Dropout",),
    "torch.nn.modules.upsampling": ("Upsample",),
    "torch.nn.modules.flatten": ("Flatten",),
    "torch.nn.parallel.data_parallel": ("DataParallel",),
}
MODULE_CLASSES: dict[str, tuple[str, ...]] = {
    **TORCH_NN_CLASSES,
    # torchxrayvision/models.py: DenseNet and its parts, ResNet wrapper (saved whole by the publisher)
    "torchxrayvision.models": ("DenseNet", "_DenseBlock", "_DenseLayer", "_Transition", "ResNet"),
    # torchvision layouts (CheXNet reproductions sometimes save the module)
    "torchvision.models.densenet": ("DenseNet", "_DenseBlock", "_DenseLayer", "_Transition"),
    "torchvision.models.resnet": ("ResNet", "Bottleneck", "BasicBlock"),
}
"""Module classes whose pickled state is rebuilt (as data) instead of refused."""


def _no_backend() -> None:
    """Stands in for ``torch.nn.backends.thnn._get_thnn_function_backend``: modules pickled by
    torch <= 1.2 carry ``_backend`` (a THNNFunctionBackend whose ``__reduce__`` names that
    function, with no arguments). It holds no weights; the inert module keeps None."""
    return None


_FUNCTIONS: dict[tuple[str, str], Any] = {
    ("torch.nn.backends.thnn", "_get_thnn_function_backend"): _no_backend,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
    ("torch", "Size"): torch.Size,
}
_DTYPES = {name for name in dir(torch) if isinstance(getattr(torch, name, None), torch.dtype)}


class ModuleState:
    """An unpickled module, inert: ``state`` is its ``__dict__`` and nothing else ran."""

    class_path = "?"
    dump_patches = False  # read by torch's legacy loader when it compares module sources

    def __setstate__(self, state: Any) -> None:
        self.__dict__["state"] = state if isinstance(state, dict) else {}

    def state_dict(self, prefix: str = "") -> collections.OrderedDict[str, torch.Tensor]:
        """Parameters and persistent buffers by dotted name, as ``nn.Module.state_dict`` gives."""
        out: collections.OrderedDict[str, torch.Tensor] = collections.OrderedDict()
        state = self.__dict__.get("state", {})
        skip = state.get("_non_persistent_buffers_set") or set()
        for group in ("_parameters", "_buffers"):
            for name, value in (state.get(group) or {}).items():
                if isinstance(value, torch.Tensor) and not (group == "_buffers" and name in skip):
                    out[prefix + name] = value.detach()
        for name, child in (state.get("_modules") or {}).items():
            if isinstance(child, ModuleState):
                out.update(child.state_dict(f"{prefix}{name}."))
        return out


_STATE_CLASSES: dict[str, type[ModuleState]] = {}


def _state_class(module: str, name: str) -> type[ModuleState]:
    path = f"{module}.{name}"
    if path not in _STATE_CLASSES:
        _STATE_CLASSES[path] = type(name, (ModuleState,), {"class_path": path, "__module__": __name__})
    return _STATE_CLASSES[path]


def allowed_global(module: str, name: str, source: str) -> Any:
    """What the restricted unpickler gives for ``module.name``; raises for anything else."""
    if (module, name) in _FUNCTIONS:
        return _FUNCTIONS[(module, name)]
    if module == "torch" and (name.endswith("Storage") or name in _DTYPES):
        value = getattr(torch, name, None)
        if value is not None:
            return value
    if name in MODULE_CLASSES.get(module, ()):
        return _state_class(module, name)
    raise UnsafePickleError(
        f"{source}: refused to load: the file asks to call {module}.{name}, which is not a tensor, "
        "a container or an allow-listed network class. A weights file never needs that; this one "
        "may try to run code. It was not loaded."
    )


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` consults an allow-list (see module doc)."""

    source = "pickle"

    def find_class(self, module: str, name: str) -> Any:
        # protocol <= 2 files name Python 2 modules ("__builtin__.set"): map them as pickle does
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        return allowed_global(module, name, self.source)


class _PickleModule:
    """The ``pickle_module`` torch.load calls: our unpickler, named after the file."""

    def __init__(self, source: str) -> None:
        outer = source

        class Unpickler(RestrictedUnpickler):
            source = outer

        self.Unpickler = Unpickler
        self.__name__ = "xraytriage_restricted_pickle"

    def load(self, file: Any, **kwargs: Any) -> Any:
        return self.Unpickler(file, **kwargs).load()

    def loads(self, data: bytes, **kwargs: Any) -> Any:
        return self.Unpickler(io.BytesIO(data), **kwargs).load()


def restricted_load(path: str | Path) -> Any:
    """Unpickle a torch file (zip or legacy) with the allow-list; modules come back as
    :class:`ModuleState`. Raises :class:`UnsafePickleError` for anything not allowed."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # source-change / legacy-format notices
            return torch.load(
                path, map_location="cpu", pickle_module=_PickleModule(str(path)), weights_only=False
            )
    except UnsafePickleError:
        raise
    except Exception as exc:
        raise XRayTriageError(
            f"{path}: not a readable torch weights file ({exc.__class__.__name__}: {exc})"
        ) from None


def load_weights_file(path: str | Path) -> Any:
    """A downloaded weights file as plain data: ``torch.load(weights_only=True)`` first, then the
    restricted unpickler (whole pickled modules). Never executes code from the file."""
    path = Path(path)
    if not path.is_file():
        raise XRayTriageError(f"{path}: weights file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass  # e.g. a whole pickled module: torch's allow-list refused its class; try ours
    except Exception as exc:
        raise XRayTriageError(
            f"{path}: not a readable torch weights file ({exc.__class__.__name__}: {exc})"
        ) from None
    return restricted_load(path)


def state_dict_of(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """The tensors of a loaded weights object: a module (inert or real), a state dict, or a
    checkpoint dict holding one under ``state_dict`` / ``model_state_dict`` / ``model``."""
    if isinstance(obj, ModuleState):
        return dict(obj.state_dict())
    if isinstance(obj, torch.nn.Module):
        return dict(obj.state_dict())
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, (dict, ModuleState, torch.nn.Module)):
                return state_dict_of(inner, source)
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    raise XRayTriageError(f"{source}: no weights found (expected a state dict or a pickled network)")
