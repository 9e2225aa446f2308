"""The control plane: the shared store, the engine that syncs a worker with it, rollouts and their analysis."""
