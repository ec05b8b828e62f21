"""mixture_lora export: the base model, the mixture adapter and a standalone loader.

Token-routed LoRA experts change the weight per token, so no static weight equals them. The honest export is
therefore a bundle:

    <out>/                      the base model, a standard HF directory (loads on its own, without the adapter)
    <out>/mixture_lora/adapter.safetensors   router, A and B of every adapted linear (keys: module path + name)
    <out>/mixture_lora/adapter.json          num_experts, top_k, scaling and the adapted module paths
    <out>/load_mixture_lora.py               loads base + adapter with torch and transformers only

The loader is written from LOADER below; its forward is the same formula as forge's MixtureLoraLinear.
"""

from __future__ import annotations

import json
from pathlib import Path

from forge_trl.injection.bundle import head_of, loader_script, write_base_model

LOADER = '''"""Load a forge_trl mixture_lora export with torch + transformers + safetensors (no forge_trl needed).

    from load_mixture_lora import load
    model = load("path/to/export")          # the base model (causal LM or reward model) with the mixture patched in
"""
import json
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file


class MixtureLoraLinear(torch.nn.Module):
    """y = W x + scaling * sum_e g_e(x) B_e A_e x with g = softmax(router x) (top-k renormalised if set)."""

    def __init__(self, base, router, lora_a, lora_b, scaling, top_k):
        super().__init__()
        self.base, self.scaling, self.top_k = base, scaling, top_k
        self.router = torch.nn.Parameter(router, requires_grad=False)  # (N, in)
        self.lora_a = torch.nn.Parameter(lora_a, requires_grad=False)  # (N, r, in)
        self.lora_b = torch.nn.Parameter(lora_b, requires_grad=False)  # (N, out, r)

    def forward(self, x):
        result = self.base(x)
        tokens = x.reshape(-1, x.shape[-1])
        probs = torch.nn.functional.linear(tokens.float(), self.router.float()).softmax(-1)
        if self.top_k:
            top_w, top_i = probs.topk(self.top_k, dim=-1)
            probs = torch.zeros_like(probs).scatter(-1, top_i, top_w / top_w.sum(-1, keepdim=True))
        h = torch.einsum("ti,eri->ter", tokens.to(self.lora_a.dtype), self.lora_a)
        delta = torch.einsum("ter,eor->to", h * probs.to(h.dtype).unsqueeze(-1), self.lora_b)
        return result + (self.scaling * delta).to(result.dtype).reshape(*x.shape[:-1], -1)


# <load_base>

def load(path, **from_pretrained_kwargs):
    path = Path(path)
    spec = json.loads((path / "mixture_lora" / "adapter.json").read_text())
    model = load_base(path, spec.get("head", "causal_lm"), **from_pretrained_kwargs)
    weights = load_file(str(path / "mixture_lora" / "adapter.safetensors"))
    for module_path in spec["modules"]:
        parent_path, _, child = module_path.rpartition(".")
        parent = model.get_submodule(parent_path)
        base = getattr(parent, child)
        patched = MixtureLoraLinear(
            base, weights[module_path + ".router"], weights[module_path + ".lora_A"],
            weights[module_path + ".lora_B"], spec["scaling"], spec["top_k"],
        ).to(base.weight.device)
        setattr(parent, child, patched)
    return model.eval()
'''


def write_mixture_bundle(peft_model, layer_cls, out_dir: Path) -> None:
    from safetensors.torch import save_file

    tensors, modules, scaling, top_k = {}, [], None, None
    for name, module in peft_model.named_modules():
        if not isinstance(module, layer_cls):
            continue
        path = name.split("base_model.model.", 1)[-1]
        modules.append(path)
        tensors[f"{path}.router"] = module.lora_router["default"].weight.detach().float().contiguous()
        tensors[f"{path}.lora_A"] = module.lora_A["default"].weight.detach().float().contiguous()
        tensors[f"{path}.lora_B"] = module.lora_B["default"].weight.detach().float().contiguous()
        scaling, top_k = module.scaling["default"], module.top_k["default"]
    write_base_model(peft_model, out_dir)
    adapter_dir = Path(out_dir) / "mixture_lora"
    adapter_dir.mkdir()
    save_file(tensors, str(adapter_dir / "adapter.safetensors"))
    spec = {
        "format": "forge_trl.mixture_lora/1",
        "head": head_of(peft_model.get_base_model()),
        "scaling": scaling,
        "top_k": top_k,
        "modules": modules,
    }
    (adapter_dir / "adapter.json").write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
    (Path(out_dir) / "load_mixture_lora.py").write_text(loader_script(LOADER), encoding="utf-8")
