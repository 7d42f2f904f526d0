"""TensorRT devices: every build decision, pure and testable without TensorRT (`engine`), engines built and
measured on this GPU (`build`), and deploy bundles for a Jetson, whose engines are built on the Jetson (`bundle`,
with the device data in profiles/jetson.json)."""
