"""Parity of ltjax's training steps with PyTorch replicas of the official code (issue 11)."""
