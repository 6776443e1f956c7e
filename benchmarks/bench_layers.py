"""The convolution layers the kernel benchmarks time: one list, shared.

``CONVS`` are the six layers of docs/performance.md (LeNet C1/C3, 3->32,
32->32, 64->64, 128->128); ``FAMILIES`` are the shapes of real CNNs beyond
them (5x5 with 32-64 channels, stride 2, 1x1, a 7x7 stride-2 stem, 8x8 and 7x7
planes). ``bench_kernels.py`` and ``bench_conv_isa.py`` both import them from
here, so the two benchmarks always time the same shapes.

Not here: data, validation or timing.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Conv:
    """One square conv layer: batch ``N``, ``C`` -> ``K`` channels, ``H``x``H`` input, ``k``x``k`` kernel."""

    name: str
    N: int
    C: int
    H: int
    K: int
    k: int
    pad: int
    stride: int = 1
    first: bool = False  # a network's first layer: also timed without dx

    @property
    def out(self) -> int:
        """Output height (= width)."""
        return (self.H + 2 * self.pad - self.k) // self.stride + 1

    @property
    def fwd_flops(self) -> float:
        """Multiply-adds of the forward pass, counted as 2 flops each."""
        return 2.0 * self.N * self.K * self.out**2 * self.C * self.k * self.k


CONVS = [
    Conv("LeNet C1 1->6 k5 p2 28x28", 64, 1, 28, 6, 5, 2, first=True),
    Conv("LeNet C3 6->16 k5 14x14", 64, 6, 14, 16, 5, 0),
    Conv("3->32 k3 p1 32x32", 64, 3, 32, 32, 3, 1, first=True),
    Conv("32->32 k3 p1 32x32", 64, 32, 32, 32, 3, 1),
    Conv("64->64 k3 p1 16x16", 64, 64, 16, 64, 3, 1),
    Conv("128->128 k3 p1 16x16 b32", 32, 128, 16, 128, 3, 1),
]

FAMILIES = [
    Conv("32->64 k5 p2 14x14", 64, 32, 14, 64, 5, 2),
    Conv("64->128 k3 p1 s2 16x16", 64, 64, 16, 128, 3, 1, stride=2),
    Conv("64->128 k1 16x16", 64, 64, 16, 128, 1, 0),
    Conv("stem 3->64 k7 p3 s2 64x64 b16", 16, 3, 64, 64, 7, 3, stride=2, first=True),
    Conv("128->128 k3 p1 8x8", 64, 128, 8, 128, 3, 1),
    Conv("128->128 k3 p1 7x7", 64, 128, 7, 128, 3, 1),
]

SHAPE_SETS = {"base": CONVS, "families": FAMILIES, "all": CONVS + FAMILIES}
