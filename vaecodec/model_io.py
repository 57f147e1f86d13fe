"""Shipped model files: export a trained network with its integer hyper-synthesis and coding tables into
one safetensors file, and load it back (no pickle) into the pieces the codec needs."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file as np_load_file
from safetensors.numpy import save_file as np_save_file

from .entropy_models import factorized_tables, gaussian_tables, scale_table
from .errors import ModelFileError
from .integer_net import (
    ACT_BITS,
    SIGNATURE_KEYS,
    IntegerContext,
    IntegerGroupNet,
    IntegerNet,
    layer_signature,
    quantize_layer,
    quantize_sequential,
    sequential_layers,
)
from .network import GainedHyperprior, ModelConfig
from .range_coding import Table

FILE_FORMAT = "vaecodec-model-1"
DEFAULT_MODEL_NAME = "hp2"
GROUP_NETS = ("group_anchor", "group_other")  # per channel group after the first, in the int_context_layers
FLOAT_PREFIX = "float."
# networks stored only in their exact integer form
INTEGER_MODULES = ("h_s.", "ctx.", "ctx_params.", "group_anchor.", "group_other.")


def default_model_path() -> Path:
    """The shipped default model, found in an installed package or in a source checkout."""
    name = f"{DEFAULT_MODEL_NAME}.safetensors"
    try:
        p = Path(str(resources.files("vaecodec.weights") / name))
        if p.exists():
            return p
    except (ModuleNotFoundError, TypeError):
        pass
    return Path(__file__).resolve().parent.parent / "models" / name


def _fingerprint(arrays: dict[str, np.ndarray], meta: dict[str, str]) -> str:
    h = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        h.update(key.encode() + b"\0" + str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes())
    for key in sorted(meta):
        if key != "fingerprint":
            h.update(key.encode() + b"\0" + meta[key].encode())
    return h.hexdigest()


def export_model(model: GainedHyperprior, path: str | Path, name: str, half: bool = True,
                 extra_meta: dict | None = None) -> str:
    """Write weights (fp16 for the float transforms), integer h_s, and all entropy tables. Returns fingerprint."""
    model = model.eval().cpu()
    arrays: dict[str, np.ndarray] = {}
    for key, value in model.state_dict().items():
        if key.startswith(INTEGER_MODULES):
            continue  # stored once, as the exact integer network (float weights are rebuilt from it)
        v = value.detach().float()
        keep_fp32 = key.startswith(("log_gain", "log_inv_gain", "density_z"))
        arrays[FLOAT_PREFIX + key] = (v if (keep_fp32 or not half) else v.half()).numpy()
    layer_meta = _store_integer(arrays, "h_s", quantize_sequential(model.h_s))
    context_meta = None
    if model.config.context != "none":
        context_meta = {"ctx": _store_integer(arrays, "ctx", [quantize_layer(model.ctx, relu=False)]),
                        "ctx_params": _store_integer(arrays, "ctx_params", quantize_sequential(model.ctx_params))}
        for kind in GROUP_NETS if model.config.channel_groups else ():
            context_meta[kind] = [_store_integer(arrays, f"{kind}.{i}", quantize_sequential(net))
                                  for i, net in enumerate(getattr(model, kind))]
    scales = scale_table()
    y_freq, y_radius = gaussian_tables(scales)
    arrays["tables.y.freq"] = y_freq
    arrays["tables.y.radius"] = y_radius
    arrays["tables.y.threshold"] = np.ceil(scales * 2**ACT_BITS).astype(np.int64)
    z_freq, z_lo, z_hi = factorized_tables(model.density_z)
    arrays["tables.z.freq"] = z_freq
    arrays["tables.z.lo"] = z_lo
    arrays["tables.z.hi"] = z_hi
    meta = {
        "format": FILE_FORMAT,
        "name": name,
        "config": json.dumps(model.config.to_dict()),
        "int_layers": json.dumps(layer_meta),
        "act_bits": str(ACT_BITS),
    }
    if context_meta:
        meta["int_context_layers"] = json.dumps(context_meta)
    for k, v in (extra_meta or {}).items():
        meta[k] = json.dumps(v)
    meta["fingerprint"] = _fingerprint(arrays, meta)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    np_save_file(arrays, str(tmp), metadata=meta)
    tmp.chmod(0o644)
    tmp.replace(path)
    return meta["fingerprint"]


def _store_integer(arrays: dict[str, np.ndarray], module: str, specs: list[dict]) -> list[dict]:
    """Put one integer network's weights into `arrays` (int.MODULE.i.*); returns its layers' metadata."""
    layer_meta = []
    for i, spec in enumerate(specs):
        arrays[f"int.{module}.{i}.weight"] = spec["weight"].astype(np.int16)
        arrays[f"int.{module}.{i}.bias"] = spec["bias"]
        arrays[f"int.{module}.{i}.shift"] = spec["shift"]
        layer_meta.append({k: spec[k] for k in SIGNATURE_KEYS})
    return layer_meta


def _integer_specs(arrays: dict[str, np.ndarray], module: str, layer_meta: list[dict]) -> list[dict]:
    return [dict(lm, weight=arrays[f"int.{module}.{i}.weight"], bias=arrays[f"int.{module}.{i}.bias"],
                 shift=arrays[f"int.{module}.{i}.shift"]) for i, lm in enumerate(layer_meta)]


def read_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        return dict(f.metadata() or {})


def load_float_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The float network weights of a shipped model (fp32), e.g. to fine-tune from it."""
    meta = read_metadata(Path(path))
    return _float_state(np_load_file(str(path)), json.loads(meta["int_layers"]),
                        json.loads(meta.get("int_context_layers", "null")))


def _float_state(arrays: dict[str, np.ndarray], layer_meta: list[dict],
                 context_meta: dict | None = None) -> dict[str, torch.Tensor]:
    """Float weights of every layer; those of the integer networks come back from their integer form (14-bit
    exact)."""
    state = {k[len(FLOAT_PREFIX):]: torch.from_numpy(v.astype(np.float32))
             for k, v in arrays.items() if k.startswith(FLOAT_PREFIX)}
    _dequantize(state, arrays, "h_s", layer_meta, sequential=True)
    if context_meta:
        _dequantize(state, arrays, "ctx", context_meta["ctx"], sequential=False)
        _dequantize(state, arrays, "ctx_params", context_meta["ctx_params"], sequential=True)
        for kind in GROUP_NETS:
            for i, layers in enumerate(context_meta.get(kind, [])):
                _dequantize(state, arrays, f"{kind}.{i}", layers, sequential=True)
    return state


def _dequantize(state: dict, arrays: dict, module: str, layer_meta: list[dict], sequential: bool) -> None:
    conv_index = 0
    for i, lm in enumerate(layer_meta):
        w = arrays[f"int.{module}.{i}.weight"].astype(np.float64)
        shift = arrays[f"int.{module}.{i}.shift"].astype(np.float64)
        out_axis = 1 if lm["kind"] == "deconv" else 0
        shape = [1] * w.ndim
        shape[out_axis] = -1
        w = w / (2.0**shift).reshape(shape)
        b = arrays[f"int.{module}.{i}.bias"].astype(np.float64) / 2.0 ** (shift + ACT_BITS)
        name = f"{module}.{conv_index}" if sequential else module
        state[f"{name}.weight"] = torch.from_numpy(w.astype(np.float32))
        state[f"{name}.bias"] = torch.from_numpy(b.astype(np.float32))
        conv_index += 2 if lm["relu"] else 1


@dataclass
class LoadedModel:
    """Everything encode/decode needs: float transforms, exact h_s, tables, and identity."""

    name: str
    fingerprint: str
    config: ModelConfig
    network: GainedHyperprior
    h_s_int: IntegerNet
    y_tables: list[Table]
    y_thresholds: np.ndarray
    z_tables: list[Table]
    path: Path
    meta: dict
    context_int: IntegerContext | None = None  # the exact checkerboard context model, if the model has one
    channel_groups: list[tuple[int, int]] = field(default_factory=list)  # (start, stop) channels, if grouped
    group_anchor_int: list[IntegerGroupNet] = field(default_factory=list)  # group k's anchor net at k - 1
    group_other_int: list[IntegerGroupNet] = field(default_factory=list)  # and its net for the rest

    @property
    def fingerprint_bytes(self) -> bytes:
        return bytes.fromhex(self.fingerprint[:16])


def load_model(path: str | Path | None = None) -> LoadedModel:
    path = Path(path) if path is not None else default_model_path()
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    try:
        meta = read_metadata(path)
        arrays = np_load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(f"not a vaecodec model file: {path} ({exc})") from None
    if meta.get("format") != FILE_FORMAT:
        raise ModelFileError(f"not a vaecodec model file (format {meta.get('format')!r}): {path}")
    if _fingerprint(arrays, meta) != meta.get("fingerprint"):
        raise ModelFileError(f"model file is damaged or was modified (fingerprint mismatch): {path}")
    try:
        config = ModelConfig.from_dict(json.loads(meta["config"]))
        network = GainedHyperprior(config)
        layer_meta = json.loads(meta["int_layers"])
        context_meta = json.loads(meta.get("int_context_layers", "null"))
        if (context_meta is None) != (config.context == "none"):
            raise ValueError("context model layers do not match the config")
        expected = [(layer_meta, sequential_layers(network.h_s))]
        if context_meta:
            expected += [(context_meta["ctx"], [(network.ctx, False)]),
                         (context_meta["ctx_params"], sequential_layers(network.ctx_params))]
            for kind in GROUP_NETS:
                nets = list(getattr(network, kind, []))
                stored = context_meta.get(kind, [])
                if len(stored) != len(nets):
                    raise ValueError("channel group layers do not match the config")
                expected += [(layers, sequential_layers(net)) for layers, net in zip(stored, nets, strict=True)]
        for stored, layers in expected:  # weight shapes are checked by load_state_dict below
            if [{k: lm.get(k) for k in SIGNATURE_KEYS} for lm in stored] != [layer_signature(*x) for x in layers]:
                raise ValueError("integer layers do not match the architecture")
        network.load_state_dict(_float_state(arrays, layer_meta, context_meta))
        network.eval()
        h_s_int = IntegerNet(_integer_specs(arrays, "h_s", layer_meta))
        context_int = None
        if context_meta:
            (ctx_spec,) = _integer_specs(arrays, "ctx", context_meta["ctx"])
            context_int = IntegerContext(ctx_spec, _integer_specs(arrays, "ctx_params", context_meta["ctx_params"]))
        groups = {kind: [IntegerGroupNet(_integer_specs(arrays, f"{kind}.{i}", layers))
                         for i, layers in enumerate((context_meta or {}).get(kind, []))] for kind in GROUP_NETS}
        starts = network.group_starts
        channel_groups = [(a, a + c) for a, c in zip(starts, config.channel_groups, strict=True)]
        y_freq, y_radius = arrays["tables.y.freq"], arrays["tables.y.radius"]
        y_tables = [Table(y_freq[k], -int(r), int(r)) for k, r in enumerate(y_radius)]
        z_freq, z_lo, z_hi = arrays["tables.z.freq"], arrays["tables.z.lo"], arrays["tables.z.hi"]
        z_tables = [Table(z_freq[c], int(z_lo[c]), int(z_hi[c])) for c in range(len(z_lo))]
        if len(z_tables) != config.N or int(meta.get("act_bits", "-1")) != ACT_BITS:
            raise ValueError("tables do not match the architecture")
        if not 1 <= len(y_tables) <= 256 or len(arrays["tables.y.threshold"]) != len(y_tables):
            raise ValueError("latent tables and thresholds disagree")  # indices are stored as uint8
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelFileError(f"model file does not match vaecodec's architecture: {path} ({msg})") from None
    return LoadedModel(meta["name"], meta["fingerprint"], config, network, h_s_int, y_tables,
                       arrays["tables.y.threshold"], z_tables, path, meta, context_int, channel_groups,
                       groups["group_anchor"], groups["group_other"])
