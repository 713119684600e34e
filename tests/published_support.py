"""Published-model fixtures: source networks written the publishers' way, their files in each
published format, and a loopback HTTP server that serves them.

The source networks below are small re-implementations in torchvision's layout (the layout
torchxrayvision's DenseNet and ResNet and CheXNet reproductions use), independent of MONAI:
DenseNet-121 and ResNet-50 at full depth, narrow (the conversion reads the width from the
weights). Their batch-norm statistics are randomised so a wrong mapping shows in the outputs.

Formats, as the publishers ship them:
* ``module_pickle``: ``torch.save(model)`` of a torchxrayvision-like DenseNet whose classes
  live at ``torchxrayvision.models.*`` (registered only while saving, so loading cannot
  import them); zip or legacy (pre-1.6) layout;
* ``state_dict``: ``torch.save(model.state_dict())`` of a torchvision ResNet-50 (1 channel);
* ``module_pickle`` as torch <= 1.2 wrote it: legacy layout, and every module's ``__dict__`` as
  it was then (no ``_non_persistent_buffers_set`` and later hook tables) with a ``_backend``
  whose pickle names ``torch.nn.backends.thnn._get_thnn_function_backend`` (torch 1.2's
  ``THNNFunctionBackend.__reduce__``);
* ``checkpoint_dict``: CheXNet's ``model.pth.tar``: ``{"state_dict": ...}`` of a DataParallel
  ``DenseNet121`` wrapper (keys ``module.densenet121.…``, old names ``norm.1``, classifier
  ``Sequential(Linear, Sigmoid)``), legacy layout, without ``num_batches_tracked``.
"""

from __future__ import annotations

import http.server
import io
import json
import re
import sys
import threading
import types
import warnings
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

XRV_LABELS = ["Atelectasis", "Consolidation", "", "Pneumothorax", "Edema", "Effusion"]
CHEXNET_LABELS = ["Atelectasis", "Cardiomegaly", "Effusion", "Pleural_Thickening"]


# --- torchvision-layout networks ----------------------------------------------------------
class _DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int, bn_size: int = 4) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

    def forward(self, x):
        new = self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))
        return torch.cat([x, new], 1)


class _DenseBlock(nn.Sequential):
    def __init__(self, layers: int, cin: int, growth: int) -> None:
        super().__init__()
        for i in range(layers):
            self.add_module(f"denselayer{i + 1}", _DenseLayer(cin + i * growth, growth))


class _Transition(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.add_module("norm", nn.BatchNorm2d(cin))
        self.add_module("relu", nn.ReLU(inplace=True))
        self.add_module("conv", nn.Conv2d(cin, cout, 1, bias=False))
        self.add_module("pool", nn.AvgPool2d(2, 2))


class DenseNet(nn.Module):
    """torchvision / torchxrayvision DenseNet-121 (block config 6, 12, 24, 16)."""

    def __init__(self, classes: int, channels: int = 1, growth: int = 8, init: int = 16, sigmoid_head=False):
        super().__init__()
        self.features = nn.Sequential(
            OrderedDict(
                [
                    ("conv0", nn.Conv2d(channels, init, 7, 2, 3, bias=False)),
                    ("norm0", nn.BatchNorm2d(init)),
                    ("relu0", nn.ReLU(inplace=True)),
                    ("pool0", nn.MaxPool2d(3, 2, 1)),
                ]
            )
        )
        n = init
        for i, layers in enumerate((6, 12, 24, 16)):
            self.features.add_module(f"denseblock{i + 1}", _DenseBlock(layers, n, growth))
            n += layers * growth
            if i < 3:
                self.features.add_module(f"transition{i + 1}", _Transition(n, n // 2))
                n //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(n))
        linear = nn.Linear(n, classes)
        self.classifier = nn.Sequential(linear, nn.Sigmoid()) if sigmoid_head else linear
        self.op_threshs = None  # torchxrayvision keeps its thresholds on the module

    def logits(self, x):
        out = F.adaptive_avg_pool2d(F.relu(self.features(x)), 1).flatten(1)
        head = self.classifier[0] if isinstance(self.classifier, nn.Sequential) else self.classifier
        return head(out)

    def forward(self, x):
        return self.logits(x)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class ResNet50(nn.Module):
    """torchvision ResNet-50 with a 1-channel conv1, as torchxrayvision's ResNet patches it."""

    def __init__(self, classes: int, width: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = width
        for i, (blocks, stride) in enumerate(((3, 1), (4, 2), (6, 2), (3, 2))):
            planes = width * 2**i
            down = nn.Sequential(
                nn.Conv2d(cin, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4)
            )
            layers = [Bottleneck(cin, planes, stride, down)]
            cin = planes * 4
            layers += [Bottleneck(cin, planes) for _ in range(blocks - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))

    logits = forward


class CheXNetWrapper(nn.Module):
    """arnoweng/CheXNet model.py DenseNet121: ``self.densenet121`` with a Sigmoid head."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.densenet121 = DenseNet(classes, channels=3, sigmoid_head=True)

    def forward(self, x):
        return torch.sigmoid(self.densenet121.logits(x))

    def logits(self, x):
        return self.densenet121.logits(x)


def randomise(net: nn.Module, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=gen) * 0.2 - 0.1)
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=gen) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
            elif isinstance(m, nn.Linear):
                m.bias.copy_(torch.rand(m.bias.shape, generator=gen) - 0.5)
    return net.eval()


# --- files in the published formats -------------------------------------------------------
@contextmanager
def _as_torchxrayvision_classes():
    """Save-time only: the DenseNet classes appear as ``torchxrayvision.models.*``."""
    package = types.ModuleType("torchxrayvision")
    module = types.ModuleType("torchxrayvision.models")
    package.models = module
    classes = {
        "DenseNet": DenseNet,
        "_DenseBlock": _DenseBlock,
        "_DenseLayer": _DenseLayer,
        "_Transition": _Transition,
    }
    saved = {cls: (cls.__module__, cls.__qualname__) for cls in classes.values()}
    for name, cls in classes.items():
        cls.__module__, cls.__qualname__ = "torchxrayvision.models", name
        setattr(module, name, cls)
    sys.modules["torchxrayvision"], sys.modules["torchxrayvision.models"] = package, module
    try:
        yield
    finally:
        del sys.modules["torchxrayvision"], sys.modules["torchxrayvision.models"]
        for cls, (mod, qual) in saved.items():
            cls.__module__, cls.__qualname__ = mod, qual


def module_pickle_bytes(net: DenseNet, legacy: bool) -> bytes:
    buf = io.BytesIO()
    with _as_torchxrayvision_classes(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy writer looks for the classes' source
        torch.save(net, buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


TORCH12_MODULE_KEYS = ("_parameters", "_buffers", "_backward_hooks", "_forward_hooks", "_forward_pre_hooks",
                       "_state_dict_hooks", "_load_state_dict_pre_hooks", "_modules", "training")  # fmt: skip
"""``nn.Module.__init__``'s attributes in torch 1.2 (besides ``_backend``)."""


class _THNNFunctionBackend:
    """Pickles as torch 1.2's ``torch.nn.backends.thnn.THNNFunctionBackend`` did."""

    def __reduce__(self):
        import torch.nn.backends.thnn

        return (torch.nn.backends.thnn._get_thnn_function_backend, ())


def torch12_module_pickle_bytes(net: DenseNet) -> bytes:
    """``torch.save(model)`` of ``net`` as torch <= 1.2 wrote it (see the module doc)."""
    import copy

    old = copy.deepcopy(net)
    for module in old.modules():
        state = module.__dict__
        kept = {k: v for k, v in state.items() if not k.startswith("_") or k in TORCH12_MODULE_KEYS}
        state.clear()
        state.update({"_backend": _THNNFunctionBackend(), **kept})
    return module_pickle_bytes(old, legacy=True)


def state_dict_bytes(net: nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    return buf.getvalue()


def chexnet_tar_bytes(net: CheXNetWrapper) -> bytes:
    state = OrderedDict()
    for key, value in net.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue  # absent from torch 0.3 files
        state["module." + re.sub(r"\.(norm|conv)([12])\.", r".\1.\2.", key)] = value
    buf = io.BytesIO()
    torch.save(
        {"epoch": 3, "arch": "densenet121", "state_dict": state}, buf, _use_new_zipfile_serialization=False
    )
    return buf.getvalue()


def registry_entry(
    name: str, url: str, fmt: str, arch: str, labels: list[str], input_: dict, **extra
) -> dict:
    return {
        "name": name,
        "publisher": "test publisher",
        "description": f"test {arch}",
        "url": url,
        "sha256": None,
        "format": fmt,
        "architecture": arch,
        "labels": labels,
        "op_thresholds": [None if not label else 0.1 + 0.01 * i for i, label in enumerate(labels)],
        "input": input_,
        "licence": "Apache-2.0 (test)",
        "citation": "a test citation",
        "reported": "AUC 0.99 (test)",
        "sources": {"weights": "tests/published_support.py"},
        **extra,
    }


def write_registry(path: Path, entries: list[dict]) -> Path:
    path.write_text(json.dumps({"format": "xraytriage-published-models", "version": 1, "models": entries}))
    return path


# --- a loopback HTTP server ----------------------------------------------------------------
class FileServer:
    """Serves ``files`` ({"/path": bytes}) on 127.0.0.1 with Range support. ``cut[path] = n``
    makes the next response for ``path`` announce the full length but stop after ``n`` bytes
    and drop the connection (a cut download). ``requests`` records (path, Range header)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut: dict[str, int] = {}
        self.requests: list[tuple[str, str | None]] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                owner.requests.append((self.path, self.headers.get("Range")))
                data = owner.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if match:
                    start = int(match.group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                cut = owner.cut.pop(self.path, None)
                if cut is not None:
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)
