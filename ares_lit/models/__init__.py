"""Model builders and converters (tiny random models for tests, packaged pretrained weights)."""
