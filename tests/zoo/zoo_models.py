"""The zoo: real architectures built without downloads, with random weights.

``transformers`` models from tiny configs (hidden 32, 2 layers), and small re-creations of
common blocks written the way their libraries write them: a ResNet basic block, a
MobileNetV3 block (depthwise conv, squeeze-excitation, hardswish, and hardswish written as
a formula), a ConvNeXt-style block with stochastic depth (timm's ``drop_path``), a network
normalised with functional ``batch_norm`` on running-statistics buffers, an encoder built
on ``nn.TransformerEncoder`` under an untraceable top-level forward, and an RWKV-style
language model whose top level and every block branch on ``x.size(1) == 1`` (nothing
traceable: it runs eager, rewritten through its eager sites).

Each entry: a factory (seeded, so two calls build the same weights) and example inputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

VOCAB, SEQ, BATCH = 64, 7, 2


@dataclass(frozen=True)
class Entry:
    name: str
    factory: Callable[[], nn.Module]
    inputs: Callable[[], tuple]
    needs: str = ""  # a module the entry needs ("transformers")


def _seeded(build: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    def factory() -> nn.Module:
        torch.manual_seed(1234)
        return build()

    factory.__name__ = build.__name__
    return factory


def _ids() -> tuple:
    return (torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(7)),)


def _image() -> tuple:
    return (torch.randn(BATCH, 3, 16, 16, generator=torch.Generator().manual_seed(7)),)


def _sequence() -> tuple:
    return (torch.randn(BATCH, SEQ, 16, generator=torch.Generator().manual_seed(7)),)


# ---- transformers ---------------------------------------------------------------------------


def bert() -> nn.Module:
    import transformers as T

    cfg = T.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, max_position_embeddings=32)
    return T.BertModel(cfg)


def distilbert() -> nn.Module:
    import transformers as T

    cfg = T.DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                             max_position_embeddings=32)
    return T.DistilBertModel(cfg)


def gpt2() -> nn.Module:
    import transformers as T

    cfg = T.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=32, bos_token_id=0,
                       eos_token_id=0)
    return T.GPT2LMHeadModel(cfg)


def t5() -> nn.Module:
    import transformers as T

    cfg = T.T5Config(vocab_size=VOCAB, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
                     decoder_start_token_id=0)
    return T.T5Model(cfg)


def _t5_inputs() -> tuple:
    (ids,) = _ids()
    return ids, None, ids  # input_ids, attention_mask, decoder_input_ids


def mamba() -> nn.Module:
    import transformers as T

    cfg = T.MambaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, state_size=8, intermediate_size=64,
                        use_cache=False)
    return T.MambaModel(cfg)


def rwkv_hf() -> nn.Module:
    import transformers as T

    cfg = T.RwkvConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, attention_hidden_size=32,
                       intermediate_size=64, context_length=32, use_cache=False)
    return T.RwkvModel(cfg)


# ---- CNN blocks -------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """ResNet's basic block: conv-BN-ReLU twice, a projection shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True))
        self.layer1 = nn.Sequential(BasicBlock(8, 8), BasicBlock(8, 16, stride=2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layer1(self.stem(x))), 1))


class SqueezeExcite(nn.Module):
    """MobileNetV3's SE: pooled, reduced, ReLU, expanded, hardsigmoid gate."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.fc2 = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = F.adaptive_avg_pool2d(x, 1)
        scale = F.relu(self.fc1(scale), inplace=True)
        return x * F.hardsigmoid(self.fc2(scale), inplace=True)


class InvertedResidual(nn.Module):
    """MobileNetV3's block: expand, depthwise, SE, project; hardswish as a module and as a formula."""

    def __init__(self, channels: int, expanded: int) -> None:
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(channels, expanded, 1, bias=False), nn.BatchNorm2d(expanded),
                                    nn.Hardswish())
        self.depthwise = nn.Conv2d(expanded, expanded, 3, 1, 1, groups=expanded, bias=False)
        self.bn = nn.BatchNorm2d(expanded)
        self.se = SqueezeExcite(expanded, expanded // 4)
        self.project = nn.Sequential(nn.Conv2d(expanded, channels, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn(self.depthwise(self.expand(x)))
        h = h * F.relu6(h + 3.0) / 6.0  # hardswish written out, as older code does
        return x + self.project(self.se(h))


class MobileNetV3(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.Hardswish())
        self.blocks = nn.Sequential(InvertedResidual(8, 32), InvertedResidual(8, 24))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 16), nn.Hardswish(),
                                  nn.Dropout(0.2), nn.Linear(16, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


def drop_path(x: torch.Tensor, drop_prob: float = 0.0, training: bool = False) -> torch.Tensor:
    """timm's stochastic depth, as timm writes it."""
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    random_tensor = x.new_empty(shape).bernoulli_(keep_prob)
    return x * random_tensor / keep_prob


class DropPath(nn.Module):
    def __init__(self, drop_prob: float) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training)


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7, LayerNorm, pointwise MLP with GELU, layer scale, stochastic depth."""

    def __init__(self, dim: int, drop: float) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(1e-1 * torch.ones(dim))
        self.drop_path = DropPath(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dwconv(x).permute(0, 2, 3, 1)
        h = self.pwconv2(self.act(self.pwconv1(self.norm(h))))
        h = (self.gamma * h).permute(0, 3, 1, 2)
        return x + self.drop_path(h)


class StochasticDepthNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 4, stride=4)
        self.blocks = nn.Sequential(ConvNeXtBlock(16, 0.1), ConvNeXtBlock(16, 0.2))
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.stem(x)).mean((-2, -1))
        return self.head(F.dropout(h, 0.1, self.training))


class FunctionalBN(nn.Module):
    """Conv + batch_norm written with F.batch_norm on its own running statistics."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.weight = nn.Parameter(torch.ones(cout))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.register_buffer("running_mean", torch.zeros(cout))
        self.register_buffer("running_var", torch.ones(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        h = F.batch_norm(h, self.running_mean, self.running_var, self.weight, self.bias, self.training, 0.1, 1e-5)
        return F.silu(h)


class FunctionalBNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(FunctionalBN(3, 8), FunctionalBN(8, 8))
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).mean((-2, -1)))


# ---- sequence models -----------------------------------------------------------------------


class TorchTransformer(nn.Module):
    """A classifier on nn.TransformerEncoder whose own forward checks a Python value (untraceable)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(16, 32)
        layer = nn.TransformerEncoderLayer(32, 2, 64, dropout=0.1, activation="gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(32, 4)
        self.max_len = 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] > self.max_len:
            raise ValueError("sequence too long")
        return self.head(self.encoder(self.embed(x)).mean(1))


class TimeMix(nn.Module):
    """RWKV-style time mixing; a one-token step takes another path (the recurrent mode)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mix = nn.Parameter(torch.full((dim,), 0.5))
        self.key, self.value, self.receptance = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.output = nn.Linear(dim, dim)
        self.decay = nn.Parameter(-torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.size(1) == 1:
            shifted = torch.zeros_like(x)
        else:
            shifted = F.pad(x, (0, 0, 1, -1))
        xx = x * self.mix + shifted * (1 - self.mix)
        k, v = self.key(xx), self.value(xx)
        r = torch.sigmoid(self.receptance(xx))
        w = torch.exp(self.decay)
        num, den, out = torch.zeros_like(k[:, 0]), torch.zeros_like(k[:, 0]), []
        for t in range(x.size(1)):
            e = torch.exp(k[:, t].clamp(max=20))
            num, den = num * torch.exp(-w) + e * v[:, t], den * torch.exp(-w) + e
            out.append(num / (den + 1e-6))
        return self.output(r * torch.stack(out, 1))


class ChannelMix(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.key, self.value, self.receptance = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shifted = torch.zeros_like(x) if x.size(1) == 1 else F.pad(x, (0, 0, 1, -1))
        xx = 0.5 * (x + shifted)
        k = torch.square(torch.relu(self.key(xx)))
        return torch.sigmoid(self.receptance(xx)) * self.value(k)


class RWKVBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.att, self.ffn = TimeMix(dim), ChannelMix(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.size(1) == 1:
            return x + self.ffn(self.ln2(x + self.att(self.ln1(x))))
        x = x + self.att(self.ln1(x))
        return x + self.ffn(self.ln2(x))


class RWKVStyle(nn.Module):
    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, dim)
        self.blocks = nn.ModuleList(RWKVBlock(dim) for _ in range(2))
        self.ln_out = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, VOCAB, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.emb(idx)
        for block in self.blocks:
            x = block(x)
        if idx.size(1) == 1:  # one-token step: only the last position's logits
            x = x[:, -1:]
        return self.head(self.ln_out(x)) / math.sqrt(x.size(-1))


ZOO: tuple[Entry, ...] = (
    Entry("bert", _seeded(bert), _ids, "transformers"),
    Entry("distilbert", _seeded(distilbert), _ids, "transformers"),
    Entry("gpt2", _seeded(gpt2), _ids, "transformers"),
    Entry("t5", _seeded(t5), _t5_inputs, "transformers"),
    Entry("mamba", _seeded(mamba), _ids, "transformers"),
    Entry("rwkv", _seeded(rwkv_hf), _ids, "transformers"),
    Entry("resnet", _seeded(ResNet), _image),
    Entry("mobilenetv3", _seeded(MobileNetV3), _image),
    Entry("stochastic_depth", _seeded(StochasticDepthNet), _image),
    Entry("functional_bn", _seeded(FunctionalBNNet), _image),
    Entry("torch_transformer", _seeded(TorchTransformer), _sequence),
    Entry("rwkv_style", _seeded(RWKVStyle), _ids),
)


def main_output(out) -> torch.Tensor:
    """The tensor a model computes: logits or last hidden state of a transformers output."""
    if isinstance(out, torch.Tensor):
        return out
    for key in ("logits", "last_hidden_state"):
        value = getattr(out, key, None)
        if isinstance(value, torch.Tensor):
            return value
    return out[0]


TABLE: list[dict] = []  # rows filled by test_zoo, printed at the end of the run


def format_table(rows: list[dict]) -> list[str]:
    """model x pass: sites found, sites/layers changed (of which in eager code), parity errors."""
    head = ["model", "passes", "sites", "changed (eager)", "no-pass parity", "freeze rel", "eager modules"]
    lines = []
    for r in rows:
        changed = ", ".join(f"{p} {n} ({e})" for p, (n, e) in ((k, v) for k, v in r.items() if isinstance(v, tuple)))
        parity = "-" if r["parity"] is None else f"{r['parity']:.1e}"
        lines.append([r["model"], r["passes"], str(r["sites"]), changed or "-", parity, f"{r['freeze']:.1e}",
                      str(r["eager_modules"])])
    widths = [max(len(x) for x in col) for col in zip(head, *lines)]
    fmt = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return [fmt(head), fmt(["-" * w for w in widths])] + [fmt(cells) for cells in lines]
