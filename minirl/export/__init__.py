"""The same weights outside minirl: a PyTorch mirror module and a Hugging Face Llama directory.

    export_torch(model, out_dir)   out_dir/model.pt + config.json; load_torch(out_dir) -> torch module
    export_hf(model, out_dir, dtype="fp32"|"bf16")
                                   a LlamaForCausalLM directory (safetensors, config, vocabulary)

Importing this package never imports torch; `minirl.export.torch` imports it
when first used (pip install minirl[torch]), with `minirl.export.torch_model`,
the torch mirror of `minirl.model` class for class. `export_hf` needs only
numpy and safetensors.
"""

from minirl.export.hf import export_hf, load_hf
from minirl.export.torch import export_torch, load_torch, to_torch

__all__ = ["export_hf", "load_hf", "export_torch", "load_torch", "to_torch"]
