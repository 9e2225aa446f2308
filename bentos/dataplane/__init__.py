"""The data plane of one worker: endpoints, routing, batching, the ONNX runtime, cache, circuit, metrics."""
