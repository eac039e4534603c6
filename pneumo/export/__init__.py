"""Export a finished run's fold ensemble as one deployable file (ONNX or TorchScript), with its model card."""
