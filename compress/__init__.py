"""compress: prune, quantize, export and build a trained vision model, and measure every variant against FP32.

Importing the package is cheap: torch, onnxruntime and tensorrt are imported only by the stages that need them.
"""

__version__ = "0.1.0"
