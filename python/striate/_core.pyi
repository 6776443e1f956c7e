# Type stub of the compiled extension striate._core (C++ kernels behind pybind11).
# It declares no signatures: the Python layers above (striate.functional and the
# layers) check every argument and carry the public types. Not a description of
# the kernels.
from typing import Any

def __getattr__(name: str) -> Any: ...
