"""Code that reads and writes other projects' formats (diffusers, PEFT, PyTorch): weight conversion,
adapter export, video encoding and decoding. Training, data, losses and the model never import it."""
