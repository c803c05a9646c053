"""LightningDataModules for ARES."""
