"""``vgpcompile diagnose`` over many real architectures: the problems it finds, the passes it
recommends after re-measuring them, and the ones it tried and rejected (with why).

    PYTHONPATH=. TIMM_VENV/bin/python examples/diagnose_sweep.py --json tv.json   # torchvision + in-repo
    python examples/diagnose_sweep.py --only gpt2,bert,t5 --json hf.json          # transformers tiny configs
    python examples/diagnose_sweep.py --table tv.json hf.json                     # one Markdown table

Models: torchvision's classification zoo (random init; 64x64 images, 10 classes, batch 4;
NAME@224: 224x224, 1000 classes, batch 2), transformers tiny configs (random init), and
in-repo models (examples/models.py, deep MLPs, recurrent stacks). torchvision does not import
with the suite's CPU torch: run that family with the timm CI venv's python (the `tat`
candidate needs the `tat` extra there too, or it is reported as failed). A family whose
library is missing is skipped and named. Each model: one diagnose with the default candidate
limit, seed 0; float64 for the deep in-repo ones (README), float32 otherwise.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

TORCHVISION = [
    "alexnet",
    "vgg11",
    "vgg11_bn",
    "resnet18",
    "resnet50",
    "resnext50_32x4d",
    "wide_resnet50_2",
    "densenet121",
    "squeezenet1_0",
    "squeezenet1_1",
    "googlenet",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mnasnet0_5",
    "shufflenet_v2_x0_5",
    "efficientnet_b0",
    "regnet_x_400mf",
    "convnext_tiny",
    "squeezenet1_0@224",  # ImageNet size and head (1000 classes): the issue's sweep
    "densenet121@224",
]
HF = ["gpt2", "bert", "t5"]
REPO = ["deep_tanh_mlp", "issue_gelu_mlp", "tiny_transformer", "small_cnn", "lstm_stack", "rnn_50", "saturated_mlp"]


def torchvision_model(name: str):
    import torchvision

    name, _, size = name.partition("@")
    kw = {"num_classes": 1000 if size else 10}
    if name == "googlenet":
        kw.update(aux_logits=False, init_weights=True)
    torch.manual_seed(0)
    net = getattr(torchvision.models, name)(**kw)
    shape = (2, 3, int(size), int(size)) if size else (4, 3, 64, 64)
    return net, torch.randn(shape, generator=torch.Generator().manual_seed(0)), None


def hf_model(name: str):
    import transformers as tf

    torch.manual_seed(0)
    small = {"num_hidden_layers": 2, "num_attention_heads": 2, "hidden_size": 32, "intermediate_size": 64}
    if name == "gpt2":
        net = tf.GPT2Model(tf.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=100, n_positions=32))
    elif name == "bert":
        net = tf.BertModel(tf.BertConfig(vocab_size=100, max_position_embeddings=32, **small))
    else:
        cfg = tf.T5Config(vocab_size=100, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2)
        net = tf.T5EncoderModel(cfg)
    net.config.return_dict = False
    ids = torch.randint(0, 100, (4, 16), generator=torch.Generator().manual_seed(0))
    return net, ids, None


class RNN50(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.RNN(4, 32, batch_first=True)
        self.head = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1])


def saturated_mlp(depth: int = 20, width: int = 64, gain: float = 3.0) -> nn.Module:
    """A deep tanh MLP whose Xavier gain is too large: saturating and exploding."""
    torch.manual_seed(0)
    net = nn.Sequential(*[m for _ in range(depth) for m in (nn.Linear(width, width), nn.Tanh())], nn.Linear(width, 1))
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight, gain=gain)
    return net


def repo_model(name: str):
    import models

    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    if name == "deep_tanh_mlp":
        return models.deep_tanh_mlp(), torch.randn(32, 16, generator=gen), torch.float64
    if name == "issue_gelu_mlp":
        net = models.issue_gelu_mlp()
        return net, torch.randn(32, net[0].in_features, generator=gen), torch.float64
    if name == "tiny_transformer":
        return models.tiny_transformer(), torch.randn(4, 8, 8, generator=gen), None
    if name == "small_cnn":
        return models.small_cnn(), torch.randn(4, 3, 16, 16, generator=gen), None
    if name == "lstm_stack":
        return models.LSTMStack(), torch.randint(0, 50, (8, 20), generator=gen), torch.float64
    if name == "rnn_50":
        return RNN50(), torch.randn(8, 50, 4, generator=gen), torch.float64
    return saturated_mlp(), torch.randn(64, 64, generator=gen), torch.float64


FAMILIES = [("torchvision", "torchvision", TORCHVISION, torchvision_model), ("hf", "transformers", HF, hf_model),
            ("repo", None, REPO, repo_model)]  # fmt: skip


def sweep(only: set[str] | None) -> list[dict]:
    import vgpcompile

    rows = []
    for family, lib, names, build in FAMILIES:
        if lib is not None and importlib.util.find_spec(lib) is None:
            print(f"skipped {family}: {lib} is not importable in this environment", file=sys.stderr)
            continue
        for name in names:
            if only and name not in only:
                continue
            start = time.perf_counter()
            try:
                net, x, dtype = build(name)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    report = vgpcompile.diagnose(net, x, dtype=dtype)
            except Exception as err:  # a model the tool cannot measure is a row too
                rows.append({"family": family, "model": name, "error": f"{type(err).__name__}: {err}"[:300]})
                traceback.print_exc()
                continue
            v = report.before.verdict
            rows.append(
                {
                    "family": family,
                    "model": name,
                    "seconds": round(time.perf_counter() - start, 1),
                    "verdict": report.verdict,
                    "problems": v.problems,
                    "recommended": v.recommended,
                    "candidates": [c.to_dict() for c in v.candidates],
                    "figures": {k: getattr(report.before.figures, k) for k in ("grad_ratio", "signal_ratio",
                                                                                "saturation", "time_ratio")},
                }
            )  # fmt: skip
            print(f"{family}/{name}: {report.verdict[:160]} ({rows[-1]['seconds']} s)", file=sys.stderr)
    return rows


def table(rows: list[dict]) -> str:
    out = [
        "| model | problems (driving figure) | recommended, re-measured | tried, not recommended | s |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['family']}/{r['model']} | not measured: {r['error']} | – | – | – |")
            continue
        drivers = {}
        for c in r["candidates"]:
            for d in c["drivers"]:
                drivers[d["problem"]] = f"{d['figure']} {_g(d['value'])}"
        probs = ", ".join(f"{p} ({drivers[p]})" if p in drivers else p for p in r["problems"]) or "none (ok)"
        good = [c for c in r["candidates"] if c["status"] == "recommended"]
        rec = "; ".join(f"`{c['passes']}`: {c['why']}" for c in good) or "–"
        bad = [c for c in r["candidates"] if c["status"] in ("rejected", "failed", "unchanged")]
        rej = "; ".join(f"`{c['passes']}` {c['status']}: {c['why']}" for c in bad) or "–"
        out.append(f"| {r['family']}/{r['model']} | {probs} | {rec} | {rej} | {r['seconds']} |")
    return "\n".join(out)


def _g(v) -> str:
    return f"{v:.3g}" if isinstance(v, (int, float)) else str(v)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--only", help="comma-separated model names")
    p.add_argument("--table", nargs="+", metavar="JSON", help="print one Markdown table from sweep JSON files")
    args = p.parse_args(argv)
    if args.table:
        rows = [row for path in args.table for row in json.loads(Path(path).read_text())]
        print(table(rows))
        return 0
    torch.set_num_threads(1)
    rows = sweep(set(args.only.split(",")) if args.only else None)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
