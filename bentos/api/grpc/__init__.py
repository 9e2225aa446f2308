"""The Open Inference Protocol over gRPC: Triton's and KServe's `GRPCInferenceService`, in every worker."""
