"""ARES for PyTorch Lightning."""
