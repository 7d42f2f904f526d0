"""Post-training INT8: onnxruntime's quantizer for both formats (`ptq`), calibration statistics shared by them
(`ranges`), bias correction (`bias`), TensorRT's needs checked on the file (`tensorrt_check`), per-layer INT8
sensitivity and the mixed-precision fallback (`sensitivity`), and the ONNX graph helpers they share (`graph`)."""
