"""Devices: the ``device`` option of a spec or of ``--device`` as checked ``torch.device``s."""

from __future__ import annotations

import torch

from advx.contract.errors import ConfigError


def resolve_device(device: str | torch.device) -> torch.device:
    """One device, checked to exist on this machine (one-line ``ConfigError`` otherwise)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {str(device)!r}: CUDA is not available on this machine (use --device cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {str(device)!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    return dev


def resolve_devices(spec_device: str) -> list[torch.device]:
    """``"cuda:0,cuda:1"`` / ``"cuda:all"`` / ``"cpu"`` / ``"cpu,cpu"`` -> checked devices (one worker each)."""
    out: list[torch.device] = []
    for part in spec_device.split(","):
        if part == "cuda:all":
            if not torch.cuda.is_available():
                raise ConfigError("device 'cuda:all': CUDA is not available on this machine (use --device cpu)")
            out += [torch.device(f"cuda:{i}") for i in range(torch.cuda.device_count())]
        else:
            out.append(resolve_device(part))
    return out
