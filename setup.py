"""Build the optional C accelerator; everything else is in pyproject.toml.

``optional=True``: where no compiler exists (or it fails) the install still
succeeds and wshub runs on its pure-Python twin (the same code path as
``WSHUB_NO_EXTENSIONS=1``).  pip hides the build's own output, so wshub says
so where a user sees it: one warning line on the ``wshub`` logger when the
package is imported without the accelerator (silenced by choosing the pure
path with ``WSHUB_NO_EXTENSIONS=1``).  tests/packaging/ installs the sdist
with ``CC=false`` to prove it.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "wshub._speedups",
            sources=["src/wshub/_speedups.c"],
            optional=True,
            extra_compile_args=["-O2"],
        )
    ]
)
