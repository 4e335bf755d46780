"""Training: recovery fine-tuning, distillation losses and distributed runs."""
