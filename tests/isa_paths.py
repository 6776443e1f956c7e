"""The instruction-set paths this CPU runs, for tests that loop over them.

``SUPPORTED_ISAS`` is narrowest first: ``("generic",)``, ``("generic", "avx2")``
or ``("generic", "avx2", "avx512")``. The parametrised ``isa`` fixture in
conftest.py is built from it. Not here: any fixture or kernel.
"""

from __future__ import annotations

from striate import _core

ALL_ISAS = ("generic", "avx2", "avx512")  # narrowest first
SUPPORTED_ISAS = ALL_ISAS[: ALL_ISAS.index(_core.detected_isa()) + 1]
