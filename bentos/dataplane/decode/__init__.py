"""Token-by-token generation: what decides each step (scheduler, KV budget) apart from what runs it."""
