"""Training: data pipeline, losses, schedule and the (DDP-capable) training loop."""
