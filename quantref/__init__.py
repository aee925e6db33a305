"""quantref: a JAX reference implementation of neural-network quantization.

Modules, lowest layer first: :mod:`quantref.formats`, :mod:`quantref.rounding`, :mod:`quantref.affine`,
:mod:`quantref.ranges`; the walkthrough model in :mod:`quantref.data`, :mod:`quantref.models`,
:mod:`quantref.train`; runtime semantics in :mod:`quantref.runtimes`.
"""

__version__ = "0.1.0"
