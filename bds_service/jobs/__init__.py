"""Fine-tuning jobs: creation, the state machine and its lease, events, checkpoints, the runner."""
