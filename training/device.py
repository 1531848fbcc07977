"""Device and precision.

CUDA when torch.cuda.is_available(): "auto" is bf16 autocast when the GPU supports bf16
(torch.cuda.is_bf16_supported()), else fp32. On CPU, "auto" is bf16 autocast only when the CPU
has native bf16 arithmetic: the `avx512_bf16` or `amx_bf16` flag in /proc/cpuinfo (x86 Linux);
anywhere else (no such file, other architectures) it is fp32. "fp32" and "bf16" force a
precision on either device. Base weights stay fp32 in every case; bf16 is autocast, so LoRA
weights, optimizer state and the loss are fp32.

Why not torch.ops.mkldnn._is_mkldnn_bf16_supported(): it is True on any AVX-512 CPU, where
oneDNN emulates bf16. This machine is such a CPU (Xeon @ 2.80GHz, avx512f/bw/vnni, no
avx512_bf16, no amx; torch 2.13.0+cpu, 2 threads), and there bf16 autocast is about half as
fast as fp32 and not quite equal in loss. Measured 2026-11-29 (the machine was shared with other
sessions' test runs, so single figures move by tens of percent; the ratios are consistent):

- one 2048x576 @ 576x1536 matmul: fp32 103 GFLOP/s, bf16 39 GFLOP/s (x0.38);
- the issue's plain PEFT loop (SmolLM2-135M, LoRA r=8 on q,v,o, batch 4 x 512 random tokens,
  2 threads), 3 steps each, machine nearly idle: fp32 209 / 260 / 254 tokens/s, bf16 autocast
  27 / 44 / 26 tokens/s (with OMP_WAIT_POLICY=PASSIVE: fp32 241 / 166 / 152, bf16 39 / 54 / 82,
  load rising meanwhile); loss after 3 steps fp32 13.0843, bf16 13.1349;
- training.trainer on bench/train_speed.py's reader-style examples (~470 tokens, all seven
  projections, r=8, batch 4), `--precisions --precision-steps 2`, ABBA, busy machine:
  fp32 113.7 and 122.0 tokens/s, bf16 67.5 and 53.2 tokens/s (bf16/fp32 = 0.51); per-step
  losses fp32 [0.7176, 0.6085], bf16 [0.7160, 0.6354] (gap 0.027 at step 2).

So "auto" is fp32 here: faster and the reference loss. (The training issue quoted 485 tokens/s in
bf16 vs 226 in fp32 for that loop; the fp32 figure reproduces, the bf16 one does not on this CPU.
On a CPU with avx512_bf16 or AMX, bf16 matmuls run natively and are expected to win, not measured
here; "auto" picks bf16 there.)

Threads: with 2 OpenMP threads spinning at barriers (libgomp's default wait policy), a busy
2-core machine made the loop ~10x slower (batch 4 x 128: 15 tokens/s with 2 threads, 140 with 1,
~120 with 2 threads and OMP_WAIT_POLICY=PASSIVE), so training.run sets OMP_WAIT_POLICY=PASSIVE.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_has_native_bf16() -> bool:
    flags = cpu_flags()
    return any(f in flags for f in NATIVE_BF16_FLAGS)


def choose(precision: str) -> tuple[str, str]:
    """(device, precision) for a config's precision: device "cuda" or "cpu", precision
    "fp32" or "bf16"."""
    import torch

    if torch.cuda.is_available():
        if precision == "auto":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "cuda", precision
    if precision == "auto":
        precision = "bf16" if cpu_has_native_bf16() else "fp32"
    return "cpu", precision


def autocast(device: str, precision: str):
    import torch

    if precision == "bf16":
        return torch.autocast(device_type=device, dtype=torch.bfloat16)
    return contextlib.nullcontext()
