"""The pipeline's stages: each is a plain function (callable from tests and notebooks) plus its click command."""
