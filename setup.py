"""Build the optional C accelerator; everything else is in pyproject.toml.

``optional=True``: where no compiler exists the install still succeeds and
wshub runs on its pure-Python twin (the same code path as
``WSHUB_NO_EXTENSIONS=1``).
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
