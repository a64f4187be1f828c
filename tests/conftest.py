"""Test harness: 8 fake CPU devices for pmap/mesh tests; must run before JAX is imported.

Tests run a handful of steps on Inception-sized graphs, so compiling dominates their time: XLA's
CPU backend optimisation is turned down for them (Inception's train step compiles ~25% faster,
runs ~3.5x slower; results differ from default flags only at float32 rounding). Subprocesses started
by tests inherit it through `FAST_COMPILE_FLAGS`.
"""

import os
import sys

FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=8 {FAST_COMPILE_FLAGS}")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def pytest_collection_modifyitems(config, items):
    """Files holding a slow test run first, the rest after, each group in its usual order: under
    scripts/test.sh's `-n 2 --dist loadfile` the two workers start on the long files, so that neither
    is left with one at the end while the other has finished."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)
