"""Export a checkpoint to ONNX, with stage-2 normalisation inside the graph, and read an export's
metadata back (the parity check against PyTorch is ``models.parity``).

The exported graph takes the **uint8 output of stage 1** of the preprocessing contract,
shape ``(N, S, S)`` with a dynamic batch ``N``, and returns **raw logits** ``(N, L)`` and the
network's pooled penultimate **features** ``(N, D)`` (for the out-of-distribution score):

    uint8 -> float -> (x / 255 - mean) / std -> repeat to C channels -> network -> logits, features

So the ONNX path and the PyTorch path see identical tensors (both call the contract's
arithmetic) and a caller of the ONNX file only needs stage 1 (decode, intensity, resize).
Calibration stays outside the graph (``Checkpoint.probabilities``); everything needed to
apply it travels in the model's ``metadata_props`` so an ``.onnx`` file is self-describing:

    xraytriage.format        "xraytriage-onnx"
    xraytriage.name          checkpoint name
    xraytriage.state_hash    hash of the weights and config (detects a stale export)
    xraytriage.label_names   JSON list, output order
    xraytriage.preprocess    JSON preprocessing contract
    xraytriage.model         JSON model config
    xraytriage.head          JSON {thresholds, calibration, abnormal, scope, critical, expected_rates}
    xraytriage.ood           JSON out-of-distribution reference (absent when the checkpoint has none)
    xraytriage.outputs       JSON list of the graph's outputs (older exports: logits only)
    xraytriage.package_version
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xraytriage import __version__
from xraytriage.errors import MissingFileError, XRayTriageError
from xraytriage.models.checkpoint import Checkpoint
from xraytriage.models.factory import ModelConfig
from xraytriage.models.features import WithFeatures
from xraytriage.models.onnx_format import (
    DEFAULT_OPSET,
    FEATURES_NAME,
    INPUT_NAME,
    META_PREFIX,
    ONNX_FORMAT,
    OUTPUT_NAME,
)
from xraytriage.preprocess import PreprocessContract


class NormalizedNetwork(nn.Module):
    """The network with stage 2 of the preprocessing contract in front of it."""

    def __init__(self, network: nn.Module, contract: PreprocessContract) -> None:
        super().__init__()
        self.network = network
        self.contract = contract

    def forward(self, image_uint8: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        return self.network(self.contract.normalize(image_uint8))


def state_hash(checkpoint: Checkpoint) -> str:
    """A stable hash of everything that changes the logits: weights, model config, stage 2.

    Weights are hashed as float32 so a float16-stored checkpoint and its float32 twin match
    (they export to the same graph).
    """
    digest = hashlib.sha256()
    digest.update(json.dumps(checkpoint.model.to_dict(), sort_keys=True).encode())
    digest.update(json.dumps(checkpoint.preprocess.to_dict(), sort_keys=True, default=str).encode())
    for key in sorted(checkpoint.state_dict):
        tensor = checkpoint.state_dict[key].detach().cpu()
        if tensor.is_floating_point():
            tensor = tensor.float()
        digest.update(key.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


def onnx_metadata(checkpoint: Checkpoint) -> dict[str, str]:
    head = {
        "thresholds": checkpoint.thresholds,
        "calibration": checkpoint.calibration,
        "abnormal": checkpoint.abnormal,
        "scope": checkpoint.scope,
        "critical": checkpoint.critical,
        "expected_rates": checkpoint.expected_rates,
    }
    return {
        f"{META_PREFIX}format": ONNX_FORMAT,
        f"{META_PREFIX}name": checkpoint.name,
        f"{META_PREFIX}state_hash": state_hash(checkpoint),
        f"{META_PREFIX}label_names": json.dumps(list(checkpoint.label_names)),
        f"{META_PREFIX}preprocess": json.dumps(checkpoint.preprocess.to_dict(), default=str),
        f"{META_PREFIX}model": json.dumps(checkpoint.model.to_dict()),
        f"{META_PREFIX}head": json.dumps(head),
        f"{META_PREFIX}package_version": __version__,
        f"{META_PREFIX}checkpoint_created": checkpoint.created,
        f"{META_PREFIX}outputs": json.dumps([OUTPUT_NAME, FEATURES_NAME]),
        **({f"{META_PREFIX}ood": json.dumps(checkpoint.ood)} if checkpoint.ood else {}),
    }


def export_onnx(checkpoint: Checkpoint, output: str | Path, opset: int = DEFAULT_OPSET) -> Path:
    """Write ``checkpoint`` as an ONNX model taking uint8 ``(N, S, S)``; returns the path.

    Uses the TorchScript-based exporter (``dynamo=False``): it handles every MONAI backbone
    here and needs no extra packages. Written atomically, so a concurrent reader never sees
    a half-written file.
    """
    import onnx

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    size = int(checkpoint.preprocess.size)
    module = NormalizedNetwork(WithFeatures(checkpoint.build_model()), checkpoint.preprocess).eval()
    example = torch.zeros((2, size, size), dtype=torch.uint8)
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (example,),
                str(tmp),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME, FEATURES_NAME],
                dynamic_axes={
                    INPUT_NAME: {0: "batch"},
                    OUTPUT_NAME: {0: "batch"},
                    FEATURES_NAME: {0: "batch"},
                },
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        model = onnx.load(str(tmp))
        for key, value in onnx_metadata(checkpoint).items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        model.producer_name = "xraytriage"
        model.producer_version = __version__
        onnx.checker.check_model(model)
        onnx.save(model, str(tmp))
        tmp.replace(output)
    finally:
        tmp.unlink(missing_ok=True)
    return output


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """The ``xraytriage.*`` metadata of an ONNX file (keys without the prefix)."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(path, "ONNX file")
    try:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        props = session.get_modelmeta().custom_metadata_map
    except Exception as exc:
        raise XRayTriageError(f"{path}: not a readable ONNX model: {exc}") from None
    meta = {k[len(META_PREFIX) :]: v for k, v in props.items() if k.startswith(META_PREFIX)}
    if meta.get("format") != ONNX_FORMAT:
        raise XRayTriageError(f"{path}: ONNX model was not exported by xraytriage (no metadata)")
    return meta


def head_checkpoint(meta: dict[str, str]) -> Checkpoint:
    """A weightless checkpoint rebuilt from ONNX metadata: labels, contract, thresholds and
    calibration work (all the ONNX path needs); ``build_model`` gives untrained weights."""
    head: dict[str, Any] = json.loads(meta.get("head", "{}"))
    return Checkpoint(
        model=ModelConfig.from_dict(json.loads(meta["model"])),
        label_names=json.loads(meta["label_names"]),
        preprocess=PreprocessContract.from_dict(json.loads(meta["preprocess"])),
        state_dict={},
        thresholds=dict(head.get("thresholds", {})),
        calibration=dict(head.get("calibration", {})),
        abnormal=dict(head.get("abnormal", {})),
        name=meta.get("name", "xraytriage-model"),
        package_version=meta.get("package_version", "?"),
        created=meta.get("checkpoint_created", ""),
        scope=head.get("scope"),
        critical={str(k): float(v) for k, v in (head.get("critical") or {}).items()},
        expected_rates=head.get("expected_rates") if isinstance(head.get("expected_rates"), dict) else None,
        ood=json.loads(meta["ood"]) if meta.get("ood") else None,
    )


def onnx_matches(path: str | Path, checkpoint: Checkpoint) -> bool:
    """True when ``path`` is an xraytriage ONNX export of exactly these weights, with the
    features output (an older export gives logits only: it is exported again)."""
    try:
        meta = read_onnx_metadata(path)
    except XRayTriageError:
        return False
    return meta.get("state_hash") == state_hash(checkpoint) and FEATURES_NAME in json.loads(
        meta.get("outputs", "[]")
    )
