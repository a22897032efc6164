"""On-device benchmarking over adb (``benchmark_model`` on phones).

Not built yet (DESIGN.md section 7); it will implement the profiling backend interface.
"""
