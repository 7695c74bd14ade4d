"""Only the compiled scoring kernels are configured here; everything else is in pyproject.toml."""

from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    ext_modules=cythonize(
        [Extension("thronos_analytics.analytics._kernels", ["analytics/_kernels.pyx"])],
        compiler_directives={"language_level": "3"},
    )
)
