"""llvm_e8m0: how LLVM's APFloat, torch, ml_dtypes and torchao round float32 to OCP MX e8m0.

Modules: ``build`` (compile the APFloat shared library), ``llvm_lib`` (ctypes bindings),
``reference`` (pure-Python OCP MX reference), ``implementations`` (every converter behind one
``float32 bits -> e8m0 bits`` function), ``expected`` (each converter's documented behaviour),
``sweep`` (the differential sweep CLI). See README.md.
"""
