"""The compiled parts; everything else is in pyproject.toml. Cython builds the scoring
kernels (analytics/_kernels.pyx) and the pure-Python modules that
thronos_analytics/_compiled.py lists, from their unchanged source."""

import os
import runpy

from Cython.Build import cythonize
from setuptools import Extension, setup

compiled = runpy.run_path("thronos_analytics/_compiled.py")
modules = [
    Extension(f"{compiled['PACKAGE']}.{name}", [compiled["source_of"](name)])
    for name in compiled["MODULES"]
]

setup(
    ext_modules=[
        *cythonize(
            [Extension("thronos_analytics.analytics._kernels", ["analytics/_kernels.pyx"])],
            compiler_directives={"language_level": "3"},
        ),
        # As Python runs them: annotations are not C types here.
        *cythonize(
            modules,
            compiler_directives={"language_level": "3", "annotation_typing": False},
            nthreads=os.cpu_count() or 1,
        ),
    ],
    options={"build_ext": {"parallel": os.cpu_count() or 1}},
)
