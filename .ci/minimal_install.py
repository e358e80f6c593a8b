"""The minimal-install stage of .ci/run: in a venv holding only `pip install .` (no extras),
run `vgpcompile passes`, `plan`, `convert`, `diagnose` on examples/models.py and the same
through the API; a feature behind an extra (ONNX) must fail with one line naming it.

Usage: python .ci/minimal_install.py PATH/TO/venv/bin/vgpcompile
"""

import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = str(ROOT / "examples" / "models.py")


def check(ok: bool, message: str = "check failed") -> None:
    if not ok:
        sys.exit(f"FAILED: {message}")


def cli(exe: str, *args: str, code: int = 0) -> str:
    proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=600, cwd=tempfile.gettempdir())
    if proc.returncode != code:
        sys.exit(f"FAILED: vgpcompile {' '.join(args)}: exit {proc.returncode}, expected {code}\n{proc.stderr}")
    print(f"ok: vgpcompile {' '.join(args)} (exit {code})")
    return proc.stderr


def main() -> None:
    exe = sys.argv[1]
    import vgpcompile

    installed = Path(vgpcompile.__file__).resolve()
    check(ROOT not in installed.parents, f"vgpcompile imported from the source tree: {installed}")
    for extra in ("onnx", "transformers", "pytest", "sklearn"):
        check(importlib.util.find_spec(extra) is None, f"{extra} is installed: this venv is not minimal")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        cli(exe, "passes")
        cli(exe, "plan", "--model", f"{MODELS}:deep_tanh_mlp", "--passes", "gpn")
        cli(exe, "convert", "--model", f"{MODELS}:small_cnn", "--passes", "gpn", "-o", str(out / "ck"),
            "--input-shape", "2,3,32,32")  # fmt: skip
        cli(exe, "diagnose", "--model", f"{MODELS}:deep_tanh_mlp", "--input-shape", "16,16", "--passes", "bsnn",
            "--out", str(out / "report"), "--batches", "2")  # fmt: skip
        check({p.name for p in (out / "report").iterdir()} >= {"report.json", "report.md", "gradients.png"})
        err = cli(exe, "convert", "--model", f"{MODELS}:small_cnn", "--passes", "gpn", "-o", str(out / "ck2"),
                  "--input-shape", "2,3,32,32", "--onnx", str(out / "m.onnx"), code=2)  # fmt: skip
        check("pip install 'vgpcompile[onnx]'" in err and len(err.strip().splitlines()) == 1, err)
        check(not (out / "m.onnx").exists())
        api(out)
    print("minimal install: every command ran")


def api(out: Path) -> None:
    import torch

    import vgpcompile

    sys.path.insert(0, str(ROOT / "examples"))
    import models

    check(len(vgpcompile.plan(models.deep_tanh_mlp(), ["gpn"]).sites) > 0)
    net = models.small_cnn()
    x = torch.randn(2, 3, 32, 32)
    compiled = vgpcompile.vgpcompile(net, ["gpn"], example_inputs=(x,))
    vgpcompile.save(compiled, out / "api_ck")
    again = vgpcompile.load(models.small_cnn, out / "api_ck")
    check(torch.equal(again(x), compiled(x)))
    report = vgpcompile.diagnose(models.deep_tanh_mlp(), torch.randn(16, 16), passes=["bsnn"], seeds=2)
    report.write(out / "api_report")
    print(f"ok: API plan, vgpcompile, save, load, diagnose ({report.verdict[:60]}...)")
    try:
        vgpcompile.export_onnx(compiled, out / "api.onnx", (x,))
    except vgpcompile.UsageError as err:
        check("vgpcompile[onnx]" in str(err))
    else:
        raise AssertionError("export_onnx ran without the onnx extra")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
