"""Stage 2, models: the timm model factory, checkpoints, fold models loaded back, batched inference."""
