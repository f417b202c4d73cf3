"""Shared fixtures of the llvm_e8m0 tests: the APFloat library is built (or found cached) once."""

import pytest


@pytest.fixture(scope="session")
def apfloat_library():
    from llvm_e8m0 import llvm_lib

    return llvm_lib.load_library()
