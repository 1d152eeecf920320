"""mvbind library: media decoding, ImageBind inputs and encoders, settings."""
