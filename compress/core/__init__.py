"""The base every wing stands on: errors, atomic files and stage records, the run directory and its variants,
results, the ONNX file contract, onnxruntime sessions, the CPU class, the two INT8 formats, the budget, the model
architectures and the export. The wings (prune, quantize, run, report, devices) and the backends import from
here, never from each other's internals."""
