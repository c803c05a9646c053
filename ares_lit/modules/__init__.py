"""LightningModules of the two ARES stages, and the log-prob pass they share."""
