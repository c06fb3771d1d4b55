"""driftline jobs: retraining, scheduler and replay buffer."""
