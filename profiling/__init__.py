"""Latency and size backends (LiteRT, ONNX Runtime, PyTorch) and the measurement store.

Not built yet: the search refuses the ``latency_ms`` objective with a clear error until this
package provides a latency source (DESIGN.md section 7).
"""
