"""moe_expert_lora export where transformers has no native MoE counterpart: base model + expert adapter + loader.

    <out>/                                   the base model, a standard HF directory (loads on its own)
    <out>/moe_expert_lora/adapter.safetensors   per FFN: router (N, H), and A (N, r, in) / B (N, out, r) per role
    <out>/moe_expert_lora/adapter.json          scaling, top_k, head and each FFN's form (projections, activation)
    <out>/load_moe_expert_lora.py               loads base + adapter with torch and transformers only

The loader is written from LOADER below. It computes the same function as forge's MoeExpertLoraLayer (same
routing, same FfnForm arithmetic) in the plainest way, one expert at a time; the export tests compare logits.
"""

from __future__ import annotations

import json
from pathlib import Path

from forge_trl.injection.bundle import head_of, loader_script, merge_plain_lora, write_base_model

LOADER_NAME = "load_moe_expert_lora.py"
LOADER = '''"""Load a forge_trl moe_expert_lora export with torch + transformers + safetensors (no forge_trl needed).

    from load_moe_expert_lora import load
    model = load("path/to/export")   # the base model with every adapted FFN replaced by its mixture of LoRA experts
"""
import json
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file


class MoeExpertLoraFFN(torch.nn.Module):
    """sum_k w_k expert_k(x): top-k of softmax(router x) renormalised; expert e is the frozen FFN with
    W + scaling * B_e A_e in place of every projection W."""

    def __init__(self, ffn, spec, tensors, prefix, scaling, top_k):
        super().__init__()
        self.ffn, self.spec, self.scaling, self.top_k = ffn, spec, scaling, top_k
        self.roles = [role for role, _ in spec["inputs"]]
        self.router = torch.nn.Parameter(tensors[prefix + ".router"], requires_grad=False)
        self.lora = torch.nn.ParameterDict()
        for role in self.roles + ["down"]:
            for part in ("A", "B"):
                weight = tensors[f"{prefix}.{role}.lora_{part}"]
                self.lora[role + "_" + part] = torch.nn.Parameter(weight, requires_grad=False)

    def hidden(self, projected):
        act = getattr(self.ffn, self.spec["activation"])
        if self.spec["kind"] == "gated":
            return act(projected[0]) * projected[1]
        if self.spec["kind"] == "fused_gated":
            gate, up = projected[0].chunk(2, dim=-1)
            return act(gate) * up
        return act(projected[0])

    def delta(self, role, expert, x):
        return self.scaling * ((x @ self.lora[role + "_A"][expert].T) @ self.lora[role + "_B"][expert].T)

    def forward(self, x, *args, **kwargs):
        tokens = x.reshape(-1, x.shape[-1])
        probs = torch.nn.functional.linear(tokens.float(), self.router.float()).softmax(-1)
        weights, chosen = probs.topk(self.top_k, dim=-1)
        weights = (weights / weights.sum(-1, keepdim=True)).to(tokens.dtype)
        base = {role: getattr(self.ffn, name)(tokens) for role, name in self.spec["inputs"]}
        mixed, lora_out = None, torch.zeros_like(tokens)
        for expert in range(self.router.shape[0]):
            picked = chosen == expert
            rows = picked.any(-1).nonzero().squeeze(-1)
            if rows.numel() == 0:
                continue
            w = (weights * picked).sum(-1)[rows].unsqueeze(-1)
            xe = tokens[rows]
            h = self.hidden([base[role][rows] + self.delta(role, expert, xe) for role in self.roles])
            mixed = torch.zeros(tokens.shape[0], h.shape[-1], dtype=h.dtype) if mixed is None else mixed
            mixed.index_add_(0, rows, h * w)
            lora_out.index_add_(0, rows, self.delta("down", expert, h) * w)
        out = getattr(self.ffn, self.spec["output"])(mixed) + lora_out
        if self.spec["dropout"]:
            out = getattr(self.ffn, self.spec["dropout"])(out)
        return out.reshape(x.shape)


# <load_base>

def load(path, **from_pretrained_kwargs):
    path = Path(path)
    adapter = json.loads((path / "moe_expert_lora" / "adapter.json").read_text())
    model = load_base(path, adapter["head"], **from_pretrained_kwargs)
    tensors = load_file(str(path / "moe_expert_lora" / "adapter.safetensors"))
    for spec in adapter["ffns"]:
        parent_path, _, child = spec["module"].rpartition(".")
        parent = model.get_submodule(parent_path)
        ffn = getattr(parent, child)
        mixture = MoeExpertLoraFFN(ffn, spec, tensors, spec["module"], adapter["scaling"], adapter["top_k"])
        setattr(parent, child, mixture)
    return model.eval()
'''


def write_moe_bundle(peft_model, layer_cls, out_dir: Path) -> None:
    from safetensors.torch import save_file

    tensors, ffns, scaling, top_k = {}, [], None, None
    for name, module in peft_model.named_modules():
        if not isinstance(module, layer_cls):
            continue
        path = name.split("base_model.model.", 1)[-1]
        form = module.form
        ffns.append(
            {
                "module": path,
                "kind": form.kind,
                "inputs": [list(pair) for pair in form.inputs],
                "output": form.output,
                "activation": form.activation,
                "dropout": form.dropout,
            }
        )
        tensors[f"{path}.router"] = module.lora_router["default"].weight.detach().float().contiguous()
        for role in (*(r for r, _ in form.inputs), "down"):
            for part in ("A", "B"):
                weight = getattr(module, f"lora_{role}_{part}")["default"].weight
                tensors[f"{path}.{role}.lora_{part}"] = weight.detach().float().contiguous()
        scaling, top_k = module.scaling["default"], module.top_k["default"]
    merge_plain_lora(peft_model)  # attention LoRA folds into the base weights
    write_base_model(peft_model, out_dir)
    adapter_dir = Path(out_dir) / "moe_expert_lora"
    adapter_dir.mkdir()
    save_file(tensors, str(adapter_dir / "adapter.safetensors"))
    spec = {
        "format": "forge_trl.moe_expert_lora/1",
        "head": head_of(peft_model.get_base_model()),
        "scaling": scaling,
        "top_k": top_k,
        "ffns": ffns,
    }
    (adapter_dir / "adapter.json").write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
    (Path(out_dir) / LOADER_NAME).write_text(loader_script(LOADER), encoding="utf-8")
