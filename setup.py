"""Build fastnn's C kernels (csrc/) and their Cython binding into fastnn._native.

Environment variables:
  FASTNN_NO_OPENMP=1  build serially even when the compiler supports OpenMP
  FASTNN_NATIVE=1     tune for this machine's CPU (-march=native); default is portable x86-64
"""
import glob
import os
import shutil
import subprocess
import sys
import tempfile

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

OPENMP_TEST = r"""
#include <omp.h>
int main(void) {
    int n = 0;
    #pragma omp parallel reduction(+:n)
    n += 1;
    return n > 0 ? 0 : 1;
}
"""


def env_flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def compiler_supports_openmp(compiler):
    """Compile and link a small OpenMP program with the compiler setuptools will use."""
    tmp = tempfile.mkdtemp()
    try:
        src = os.path.join(tmp, "omp_test.c")
        with open(src, "w") as f:
            f.write(OPENMP_TEST)
        objs = compiler.compile([src], output_dir=tmp, extra_postargs=["-fopenmp"])
        compiler.link_executable(objs, "omp_test", output_dir=tmp, extra_postargs=["-fopenmp"])
        return subprocess.run([os.path.join(tmp, "omp_test")]).returncode == 0
    except Exception:
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class BuildExt(build_ext):
    """Adds OpenMP (when the compiler has it) and the tuning flags to every extension."""

    def build_extensions(self):
        compile_args = ["-O3", "-fno-math-errno", "-fno-trapping-math"]
        link_args = []
        if env_flag("FASTNN_NATIVE"):
            compile_args.append("-march=native")
        if env_flag("FASTNN_NO_OPENMP"):
            print("fastnn: FASTNN_NO_OPENMP is set: building the kernels serially.")
        elif compiler_supports_openmp(self.compiler):
            compile_args.append("-fopenmp")
            link_args.append("-fopenmp")
        else:
            print(
                "WARNING: fastnn: the C compiler cannot build OpenMP programs; the kernels "
                "are built serially and will use one thread.",
                file=sys.stderr,
            )
        for ext in self.extensions:
            ext.extra_compile_args = compile_args + ext.extra_compile_args
            ext.extra_link_args = link_args + ext.extra_link_args
            ext.define_macros.append(("FASTNN_COMPILE_ARGS", '"%s"' % " ".join(compile_args)))
        super().build_extensions()


native = Extension(
    "fastnn._native",
    sources=["fastnn/_native.pyx"] + sorted(glob.glob("csrc/*.c")),
    depends=sorted(glob.glob("csrc/*.h")),  # rebuild when a header changes
    include_dirs=["csrc", numpy.get_include()],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_2_0_API_VERSION")],
)

setup(
    ext_modules=cythonize(
        [native],
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    ),
    cmdclass={"build_ext": BuildExt},
)
