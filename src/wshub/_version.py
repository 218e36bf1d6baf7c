"""The one place wshub's version is written.

``pyproject.toml`` reads it at build time (``[tool.setuptools.dynamic]``), and
``wshub.__version__``, ``wshub --version`` and the installed metadata all come
from here.  This file imports nothing, so the build can read it without wshub's
dependencies.
"""

__version__ = "0.1.0"
