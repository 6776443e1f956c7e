"""What a benchmark prints about the machine it ran on, and its ``--isa`` flag.

``add_isa_argument`` gives a benchmark's parser ``--isa NAME`` (``avx512``,
``avx2`` or ``generic``); ``apply_isa`` sets it with ``st.set_isa`` before
anything is timed (an unsupported name stops the run with the ValueError's
message). ``header`` is the line every benchmark prints first: the CPU model
from /proc/cpuinfo, the date, the ISA path the kernels take, and striate's thread count.

Not here: any timing or validation.
"""

from __future__ import annotations

import argparse
import platform
import time

import striate as st

ISAS = ("avx512", "avx2", "generic")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo with its family and model numbers
    (a virtual machine may name only the brand), else what ``platform`` knows."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor is enough
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine() or "unknown CPU"
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name


def add_isa_argument(ap: argparse.ArgumentParser) -> None:
    """Add ``--isa NAME`` to a benchmark's argument parser."""
    ap.add_argument("--isa", choices=ISAS, default=None,
                    help="SIMD path of striate's kernels (default: STRIATE_ISA or the widest the CPU supports)")


def apply_isa(ap: argparse.ArgumentParser, isa: str | None) -> None:
    """Set the path named by ``--isa`` (no-op when absent); a path the CPU lacks is a usage error."""
    if isa is None:
        return
    try:
        st.set_isa(isa)
    except ValueError as e:
        ap.error(str(e))


def header() -> str:
    """One line with the date (UTC), the CPU, the ISA path and the thread count."""
    return (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; CPU: {cpu_model()}; "
            f"striate ISA path: {st.get_isa()}; striate threads: {st.get_num_threads()}")
